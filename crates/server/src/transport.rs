//! The HTTP/1.1 transport under the router: the accept loop, the cap on
//! connections, the header, body and keep-alive timeouts, the size limits of a
//! request head, and graceful shutdown. `axum::serve` exposes none of these
//! knobs, so connections are served with hyper's HTTP/1 builder directly.
//!
//! Each connection is in one of three phases, and only the first two have a
//! deadline: waiting for a request head (`header_read_timeout`, from accept or
//! from the first byte after an idle period), idle between requests
//! (`keep_alive_timeout`, from the end of the last response), or busy with a
//! request (the body must arrive within `body_read_timeout` of its head; the
//! handler and the response are not timed here).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use fhirbox_fhir::IssueType;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::settings::ConnectionLimits;

/// Pause after a failed accept (e.g. `EMFILE`, too many open files): the
/// pending connection stays in the backlog, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "connection limit reached" warning per this interval.
const SATURATION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, closes idle connections, and waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut last_saturation_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if permits.available_permits() == 0
            && last_saturation_log.is_none_or(|at| at.elapsed() >= SATURATION_LOG_INTERVAL)
        {
            last_saturation_log = Some(Instant::now());
            tracing::warn!(
                limit = limits.max_connections,
                "connection limit reached (BOX_MAX_CONNECTIONS); new connections wait in the listen backlog"
            );
        }
        // A permit first, then accept: over the cap, connections wait in the
        // kernel's backlog instead of costing a descriptor here.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying shortly");
                    drop(permit);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it ends: all permits back means
    // every in-flight request has been answered.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// hyper's read buffer bounds the whole request head. It is larger than the
/// configured limits so that a head somewhat over them still reaches
/// [`check_head`] and gets an explanatory 414 or 431; only a head beyond this
/// gets hyper's own 431, which has no body.
fn head_buffer_bytes(limits: &ConnectionLimits) -> usize {
    (limits.max_header_bytes * 4).max(16 * 1024)
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: Arc<ConnectionLimits>,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ObservedStream {
        inner: stream,
        activity: activity.clone(),
    });
    let service = RequestService {
        router,
        peer,
        limits: limits.clone(),
        activity: activity.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own header timer also runs while a keep-alive connection is
        // idle; the phases above time header reads and idleness separately.
        .header_read_timeout(None)
        .max_buf_size(head_buffer_bytes(&limits));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            phase = activity.expired(&limits) => {
                // Dropping the connection closes the socket.
                tracing::debug!(phase, "closing a connection that exceeded its timeout");
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                // Closes an idle connection now, a busy one after its response.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head { since: Instant },
    /// Between requests of a keep-alive connection.
    Idle { since: Instant },
    /// Requests dispatched whose responses are not yet fully written.
    Busy { requests: usize },
}

/// What a connection is doing, updated by its stream and its requests.
struct Activity {
    phase: watch::Sender<Phase>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: watch::Sender::new(Phase::Head {
                since: Instant::now(),
            }),
        }
    }

    fn bytes_read(&self) {
        if matches!(*self.phase.borrow(), Phase::Idle { .. }) {
            self.phase.send_if_modified(|phase| match phase {
                Phase::Idle { .. } => {
                    *phase = Phase::Head {
                        since: Instant::now(),
                    };
                    true
                }
                _ => false,
            });
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.phase.send_modify(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                _ => Phase::Busy { requests: 1 },
            }
        });
        InFlight(self.clone())
    }

    fn request_finished(&self) {
        self.phase.send_modify(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } if requests > 1 => Phase::Busy {
                    requests: requests - 1,
                },
                _ => Phase::Idle {
                    since: Instant::now(),
                },
            }
        });
    }

    /// Completes when the current phase outlasts its timeout; names the phase.
    async fn expired(&self, limits: &ConnectionLimits) -> &'static str {
        let mut changes = self.phase.subscribe();
        loop {
            let phase = *changes.borrow_and_update();
            let (deadline, name) = match phase {
                Phase::Head { since } => (since + limits.header_read_timeout, "header"),
                Phase::Idle { since } => (since + limits.keep_alive_timeout, "idle"),
                Phase::Busy { .. } => {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep_until(deadline) => return name,
            }
        }
    }
}

/// Marks a request finished when dropped: with the response body, once hyper
/// has written all of it, or with the handler future if the client went away.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The TCP stream, reporting when bytes arrive.
struct ObservedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ObservedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for ObservedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// hyper's view of the router for one connection.
#[derive(Clone)]
struct RequestService {
    /// The peer's address, for handlers and the authenticator (`ConnectInfo`).
    peer: std::net::SocketAddr,
    router: Router,
    limits: Arc<ConnectionLimits>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let in_flight = self.activity.request_started();
        let router = self.router.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let response = handle(router, &limits, req).await;
            Ok(response.map(|body| {
                Body::new(TrackedBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

async fn handle(router: Router, limits: &ConnectionLimits, req: Request<Incoming>) -> Response {
    let style = ErrorStyle::for_path(req.uri().path());
    if let Some(refusal) = check_head(&req, limits, style) {
        return refusal;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limits.body_read_timeout;
    let req = req.map(|body| {
        if hyper::body::Body::is_end_stream(&body) {
            Body::new(body)
        } else {
            Body::new(DeadlineBody {
                inner: body,
                deadline,
                sleep: None,
                timed_out: timed_out.clone(),
            })
        }
    });
    let response = match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if timed_out.load(Ordering::Relaxed) {
        tracing::info!(
            timeout_ms = limits.body_read_timeout.as_millis() as u64,
            "request body did not arrive in time; answered 408 and closing the connection"
        );
        let mut response = style.error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time (BOX_BODY_READ_TIMEOUT_MS)",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    style.give_body(response)
}

/// 414 for a request target longer than `max_header_bytes`, 431 for header
/// fields that add up to more (RFC 9110 section 15.5.15, RFC 6585 section 5).
fn check_head(
    req: &Request<Incoming>,
    limits: &ConnectionLimits,
    style: ErrorStyle,
) -> Option<Response> {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().len())
        .unwrap_or(0);
    if target > limits.max_header_bytes {
        return Some(style.error(
            StatusCode::URI_TOO_LONG,
            "the request URI is longer than this server accepts (BOX_MAX_HEADER_BYTES); send long searches as POST _search",
        ));
    }
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if fields > limits.max_header_bytes {
        return Some(style.error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request headers are larger than this server accepts (BOX_MAX_HEADER_BYTES)",
        ));
    }
    None
}

/// How an error the transport produces is rendered: an OAuth error on the
/// token endpoint (RFC 6749 section 5.2), an OperationOutcome everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorStyle {
    OAuth,
    Fhir,
}

impl ErrorStyle {
    fn for_path(path: &str) -> ErrorStyle {
        if path == crate::auth::endpoint::TOKEN_PATH {
            ErrorStyle::OAuth
        } else {
            ErrorStyle::Fhir
        }
    }

    fn error(self, status: StatusCode, message: &str) -> Response {
        match self {
            ErrorStyle::OAuth => {
                crate::auth::endpoint::oauth_error(status, "invalid_request", message)
            }
            ErrorStyle::Fhir => {
                let code = if status == StatusCode::REQUEST_TIMEOUT {
                    IssueType::Invalid
                } else {
                    IssueType::TooLong
                };
                ApiError::new(status, code, message).into_response()
            }
        }
    }

    /// Size refusals produced below the handlers (an extractor's limit, say)
    /// come as plain text; give them the body every other error has.
    fn give_body(self, response: Response) -> Response {
        let message = match response.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is larger than this server accepts (BOX_MAX_BODY_BYTES)"
            }
            StatusCode::URI_TOO_LONG => "the request URI is longer than this server accepts",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                "the request headers are larger than this server accepts"
            }
            _ => return response,
        };
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        if is_json {
            response
        } else {
            self.error(response.status(), message)
        }
    }
}

/// The error a body read gets after the deadline.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Created at the first read, so requests whose body is never read cost no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has written it all and dropped it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
