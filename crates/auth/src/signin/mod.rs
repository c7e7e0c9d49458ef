//! Sign-in through an external OpenID provider (docs/sign-in.md). fhirbox
//! is the authorization server an application talks to (RFC 6749 §4.1 with
//! PKCE, RFC 7636) and the client of the hospital's provider (OpenID
//! Connect Core §3.1). This module holds the decisions; the routes that
//! carry them over HTTP live in the server (`server/src/auth/signin.rs`).

pub mod codes;
pub mod flow;
pub mod id_token;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clients::Grant;
use crate::identity_provider::IdentityProvider;
use crate::token::now_seconds;
use crate::users::{self, UserRecord};
use crate::AuthService;
use codes::{random_text, verifier_matches, CodeGrant, Grants, Redemption, RefreshGrant};
use flow::{Approved, AuthorizeError, Flow, FLOW_TTL};
use provider::{ProviderClient, ProviderUser, SignInFailure};

/// What sign-in keeps: the grants (in the database) and the provider calls.
pub struct SignIn {
    grants: Grants,
    pub(crate) provider: ProviderClient,
    /// The `state`s of sign-ins this instance finished, until they expire:
    /// a sealed cookie is good for one callback.
    finished: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// The most finished sign-ins remembered. Beyond it (after dropping the
/// expired) the memory starts afresh: a flood of sign-ins then weakens the
/// replay check (a replayed answer costs one more call to the provider,
/// which refuses its used code) but never locks users out.
const MAX_FINISHED: usize = 100_000;

impl SignIn {
    pub fn new(store: fhirbox_store::Store, timeout: Duration) -> SignIn {
        SignIn {
            grants: Grants::new(store),
            provider: ProviderClient::new(timeout),
            finished: std::sync::Mutex::default(),
        }
    }

    /// Records that the sign-in `state` (alive until `exp`) reached its
    /// callback; false when it did before, or when too many are remembered.
    fn first_callback(&self, state: &str, exp: u64) -> bool {
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if finished.contains_key(state) {
            return false;
        }
        if finished.len() >= MAX_FINISHED {
            let now = now_seconds();
            finished.retain(|_, until| *until > now);
            if finished.len() >= MAX_FINISHED {
                finished.clear();
            }
        }
        finished.insert(state.to_owned(), exp);
        true
    }
}

/// A sign-in sent on to its provider.
pub struct Begun {
    /// Where the browser goes now.
    pub location: String,
    pub cookie_name: String,
    pub cookie_value: String,
    pub max_age: u64,
}

/// Why a callback could not finish, and whom to tell.
#[derive(Debug)]
pub struct CallbackFailure {
    /// The application's request, when the sealed flow was found: the
    /// application hears of the failure at its redirect URI.
    pub app: Option<Approved>,
    pub reason: &'static str,
    pub error: &'static str,
    pub description: &'static str,
}

impl CallbackFailure {
    fn of(app: Option<Approved>, failure: SignInFailure) -> CallbackFailure {
        CallbackFailure {
            app,
            reason: failure.reason(),
            error: failure.oauth_error(),
            description: "the sign-in at the identity provider did not complete",
        }
    }
}

/// A successful callback: the flow and who signed in.
pub struct Finished {
    pub app: Approved,
    pub identity_provider: Arc<IdentityProvider>,
    pub user: ProviderUser,
}

/// Why a code exchange or a refresh was refused (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFailure {
    /// `invalid_grant`: unknown, used, expired, or issued to another client
    /// or redirect URI.
    InvalidGrant(&'static str),
    /// The client may not use this grant.
    UnauthorizedClient,
    /// `invalid_client`: no such active client, or one with a secret (or
    /// that must use one) that did not authenticate.
    ClientAuthentication,
    /// The database did not answer.
    Unavailable,
}

/// The User a sign-in names is inactive: it may not sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InactiveUser;

/// An access token issued for a user.
pub struct UserToken {
    pub access_token: String,
    pub expires_in: u64,
    /// When the client has the `refresh_token` grant.
    pub refresh_token: Option<String>,
    /// When the code's request asked for `openid` and an ID-token key is set.
    pub id_token: Option<String>,
}

impl AuthService {
    /// The User `id`: from the snapshot, or, when this instance has not
    /// yet seen it (another instance created it a moment ago), after a
    /// reload.
    pub async fn fresh_user(&self, id: &str) -> Option<Arc<UserRecord>> {
        if let Some(user) = self.snapshot().users.get(id) {
            return Some(user.clone());
        }
        self.catch_up().await;
        self.snapshot().users.get(id).cloned()
    }

    /// Another client presented a grant of this family: it is spent.
    async fn revoke(&self, family: &str) {
        if let Err(e) = self.signin.grants.revoke(family).await {
            tracing::error!(problem = %e, "a sign-in's refresh tokens could not be revoked");
        }
    }
}

/// The grant and family of a redemption that found a fresh grant; else
/// `invalid_grant` with the reason for a replay or an unknown value.
fn fresh<T>(
    redeemed: Result<Redemption<T>, fhirbox_store::StoreError>,
    replayed: &'static str,
    unknown: &'static str,
) -> Result<(T, String), CodeFailure> {
    match redeemed.map_err(|_| CodeFailure::Unavailable)? {
        Redemption::Fresh(grant, family) => Ok((grant, family)),
        Redemption::Replayed => Err(CodeFailure::InvalidGrant(replayed)),
        Redemption::Unknown => Err(CodeFailure::InvalidGrant(unknown)),
    }
}

impl AuthService {
    /// Checks an application's authorization request (`/auth/authorize`).
    pub fn check_authorize(&self, params: &[(String, String)]) -> Result<Approved, AuthorizeError> {
        let snapshot = self.snapshot();
        let client = params
            .iter()
            .find(|(k, _)| k == "client_id")
            .and_then(|(_, id)| snapshot.clients.get(id));
        flow::check_authorize(client.map(|c| c.as_ref()), params)
    }

    fn flow_tag(&self, json: &[u8]) -> [u8; 32] {
        self.signer.tag(&[b"fhirbox sign-in flow", json])
    }

    /// Starts the sign-in of `app` at IdentityProvider `idp`. fhirbox's
    /// redirect URI there is the provider's `client.redirect_uri`, else
    /// `default_callback` (built from `BOX_WEB_BASE_URL`, never from a
    /// request's Host).
    pub async fn begin_sign_in(
        &self,
        idp: &str,
        app: Approved,
        default_callback: Option<String>,
    ) -> Result<Begun, SignInFailure> {
        if !app.identity_providers.iter().any(|allowed| allowed == idp) {
            return Err(SignInFailure::NotAllowed);
        }
        let provider = self
            .signin
            .provider
            .complete(self.identity_provider(idp)?)
            .await?;
        let callback = provider
            .redirect_uri
            .clone()
            .or(default_callback)
            .ok_or_else(|| {
                tracing::warn!(identity_provider = %idp, reason = "idp_not_configured", "set client.redirect_uri on the IdentityProvider, or BOX_WEB_BASE_URL");
                SignInFailure::NotConfigured
            })?;
        let flow = Flow {
            idp: idp.to_owned(),
            state: random_text(),
            nonce: random_text(),
            verifier: random_text(),
            callback,
            exp: now_seconds() + FLOW_TTL,
            app,
        };
        let location = ProviderClient::authorize_url(&provider, &flow)?;
        Ok(Begun {
            location,
            cookie_name: flow.cookie_name(),
            cookie_value: flow.seal(|json| self.flow_tag(json)),
            max_age: FLOW_TTL,
        })
    }

    fn identity_provider(&self, id: &str) -> Result<Arc<IdentityProvider>, SignInFailure> {
        let provider = self
            .snapshot()
            .identity_providers
            .get(id)
            .cloned()
            .ok_or(SignInFailure::NotConfigured)?;
        if !provider.active {
            return Err(SignInFailure::Inactive);
        }
        Ok(provider)
    }

    /// Finishes a sign-in at `/auth/callback/<idp>`: the sealed flow must
    /// be this browser's (`cookie` is the value of the cookie named after
    /// `state`), then the provider's code is exchanged and its ID token
    /// checked.
    pub async fn finish_sign_in(
        &self,
        idp: &str,
        state: &str,
        cookie: Option<&str>,
        code: Option<&str>,
        provider_error: Option<&str>,
    ) -> Result<Finished, CallbackFailure> {
        let flow = cookie
            .and_then(|value| Flow::open(value, |json| self.flow_tag(json), now_seconds()))
            .filter(|flow| flow.idp == idp && flow.state == state)
            .ok_or(CallbackFailure {
                app: None,
                reason: "signin_state",
                error: "invalid_request",
                description: "this sign-in was not started in this browser, or took longer than 10 minutes; start again from the application",
            })?;
        let app = Some(flow.app.clone());
        if !self.signin.first_callback(&flow.state, flow.exp) {
            return Err(CallbackFailure {
                app,
                reason: "signin_replayed",
                error: "invalid_request",
                description: "this sign-in was already completed; start again from the application",
            });
        }
        if let Some(error) = provider_error {
            let error: String = error
                .chars()
                .take(64)
                .filter(|c| c.is_ascii_graphic())
                .collect();
            tracing::info!(identity_provider = %idp, reason = "idp_refused", error, "the provider ended the sign-in with an error");
            return Err(CallbackFailure::of(app, SignInFailure::ProviderRefused));
        }
        let code = code
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or(CallbackFailure {
                app: app.clone(),
                reason: "signin_no_code",
                error: "server_error",
                description: "the identity provider returned without a code",
            })?;
        let provider = match self.identity_provider(idp) {
            Ok(provider) => self.signin.provider.complete(provider).await,
            Err(failure) => Err(failure),
        }
        .map_err(|f| CallbackFailure::of(app.clone(), f))?;
        let user = self
            .signin
            .provider
            .finish(&provider, self.vault.as_ref(), &flow, code)
            .await
            .map_err(|f| CallbackFailure::of(app.clone(), f))?;
        Ok(Finished {
            app: flow.app,
            identity_provider: provider,
            user,
        })
    }

    /// The id of the User a finished sign-in is.
    pub fn signed_in_user_id(&self, finished: &Finished) -> String {
        users::user_id(
            &finished.identity_provider.user_system(),
            &finished.user.sub,
        )
    }

    /// The body to store for the User of a finished sign-in, given its
    /// stored body (read from the database just now, not from the cache,
    /// so a User disabled through another instance stays disabled);
    /// `Ok(None)` when nothing changed, `Err` when the User is inactive.
    pub fn signed_in_user_body(
        &self,
        finished: &Finished,
        current: Option<&Value>,
    ) -> Result<Option<Value>, InactiveUser> {
        let id = self.signed_in_user_id(finished);
        if let Some(body) = current {
            if !UserRecord::from_body(body.clone(), 0).active {
                return Err(InactiveUser);
            }
        }
        Ok(users::signed_in_body(
            current,
            &id,
            &finished.identity_provider.user_system(),
            &finished.user.sub,
            &finished.user.claims,
        ))
    }

    /// A code for the application, standing for `user`.
    pub async fn issue_code(
        &self,
        app: &Approved,
        user: &str,
    ) -> Result<String, fhirbox_store::StoreError> {
        self.signin
            .grants
            .issue_code(&CodeGrant {
                client_id: app.client_id.clone(),
                redirect_uri: app.redirect_uri.clone(),
                code_challenge: app.code_challenge.clone(),
                user: user.to_owned(),
                scope: app.scope.clone(),
                nonce: app.nonce.clone(),
            })
            .await
    }

    /// The client of a code exchange or refresh: active, allowed `grant`
    /// and the code flow, and authenticated when it has a secret.
    fn token_client(
        &self,
        client_id: &str,
        authenticated: bool,
        grant: Grant,
    ) -> Result<(Arc<crate::clients::ClientRecord>, crate::clients::CodeFlow), CodeFailure> {
        let client = self
            .snapshot()
            .clients
            .get(client_id)
            .cloned()
            .filter(|c| c.active)
            .ok_or(CodeFailure::ClientAuthentication)?;
        if !client.allows(grant) {
            return Err(CodeFailure::UnauthorizedClient);
        }
        let Ok(Some(flow)) = client.code_flow.clone() else {
            return Err(CodeFailure::UnauthorizedClient);
        };
        if !authenticated && (client.has_secret() || flow.secret_required) {
            return Err(CodeFailure::ClientAuthentication);
        }
        Ok((client, flow))
    }

    /// The tokens of a sign-in's grant: an access token, and a refresh
    /// token of `family` when the client has the `refresh_token` grant.
    async fn user_tokens(
        &self,
        client: &crate::clients::ClientRecord,
        flow: &crate::clients::CodeFlow,
        user: &str,
        scope: Option<String>,
        family: String,
        refresh_until: Option<u64>,
    ) -> Result<UserToken, CodeFailure> {
        let record = self
            .fresh_user(user)
            .await
            .filter(|u| u.active)
            .ok_or(CodeFailure::InvalidGrant("user_inactive"))?;
        let refresh_token = if client.allows(Grant::RefreshToken) {
            let grant = RefreshGrant {
                client_id: client.id.clone(),
                user: record.id.clone(),
                scope,
                until: refresh_until.unwrap_or_else(|| now_seconds() + flow.refresh_lifetime),
            };
            Some(
                self.signin
                    .grants
                    .issue_refresh(family, &grant)
                    .await
                    .map_err(|_| CodeFailure::Unavailable)?,
            )
        } else {
            None
        };
        let (access_token, _) = self.signer.issue_for_user(
            &client.id,
            &client.version_id.to_string(),
            &record.id,
            flow.token_lifetime,
        );
        Ok(UserToken {
            access_token,
            expires_in: flow.token_lifetime,
            refresh_token,
            id_token: None,
        })
    }

    /// `grant_type=authorization_code` at `/auth/token` (RFC 6749 §4.1.3):
    /// `client_id` is the authenticated client, or a public one naming
    /// itself; the code is used up by this call whatever its outcome, and
    /// a code presented again revokes the refresh tokens it led to.
    pub async fn exchange_code(
        &self,
        client_id: &str,
        authenticated: bool,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<UserToken, CodeFailure> {
        let (client, flow) =
            self.token_client(client_id, authenticated, Grant::AuthorizationCode)?;
        let (grant, family) = fresh(
            self.signin.grants.redeem_code(code).await,
            "code_replayed",
            "code_unknown",
        )?;
        if grant.client_id != client.id {
            self.revoke(&family).await;
            return Err(CodeFailure::InvalidGrant("code_other_client"));
        }
        // RFC 6749 §4.1.3: required, and identical, when the request had it;
        // fhirbox always redirects to the registered URI, so it is required.
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(CodeFailure::InvalidGrant("code_redirect_uri"));
        }
        match (&grant.code_challenge, verifier) {
            (Some(challenge), Some(verifier)) if verifier_matches(verifier, challenge) => {}
            (None, None) => {}
            _ => return Err(CodeFailure::InvalidGrant("code_verifier")),
        }
        let openid = grant
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|s| s == "openid"));
        let nonce = grant.nonce.clone();
        let mut tokens = self
            .user_tokens(&client, &flow, &grant.user, grant.scope, family, None)
            .await?;
        if openid {
            tokens.id_token = self.id_token(&client.id, &grant.user, nonce);
        }
        Ok(tokens)
    }

    /// An ID token for `user` and the application `client` (OpenID Connect
    /// Core §3.1.3.3), when a key is configured.
    fn id_token(&self, client: &str, user: &str, nonce: Option<String>) -> Option<String> {
        let key = self.id_tokens.as_ref()?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), Value::String(user.to_owned()));
        claims.insert("aud".into(), Value::String(client.to_owned()));
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), Value::String(nonce));
        }
        if let Some(record) = self.snapshot().users.get(user) {
            if let Some(Value::String(name)) = record.body.pointer("/name/text") {
                claims.insert("name".into(), Value::String(name.clone()));
            }
            // An address the provider did not say it verified is not
            // passed on: an application may link accounts by it.
            if record.body.pointer("/data/email_verified") == Some(&Value::Bool(true)) {
                if let Some(Value::String(email)) = record.body.get("email") {
                    claims.insert("email".into(), Value::String(email.clone()));
                    claims.insert("email_verified".into(), Value::Bool(true));
                }
            }
        }
        match key.sign(claims) {
            Ok(token) => Some(token),
            Err(problem) => {
                tracing::error!(reason = "id_token_key", %problem, "no ID token: the key in BOX_AUTH_ID_TOKEN_KEY_FILE cannot be used");
                None
            }
        }
    }

    /// Sets the key ID tokens are signed with (call before sharing the service).
    pub fn configure_id_tokens(&mut self, key: id_token::IdTokenKey) {
        self.id_tokens = Some(key);
    }

    /// The ID-token key, when one is configured.
    pub fn id_token_key(&self) -> Option<&id_token::IdTokenKey> {
        self.id_tokens.as_ref()
    }

    /// `grant_type=refresh_token` (RFC 6749 §6): a new access token and a
    /// new refresh token in place of the one presented, which is used up; a
    /// used one presented again revokes its family.
    pub async fn refresh(
        &self,
        client_id: &str,
        authenticated: bool,
        refresh_token: &str,
    ) -> Result<UserToken, CodeFailure> {
        let (client, flow) = self.token_client(client_id, authenticated, Grant::RefreshToken)?;
        let (grant, family) = fresh(
            self.signin.grants.redeem_refresh(refresh_token).await,
            "refresh_replayed",
            "refresh_unknown",
        )?;
        if grant.client_id != client.id {
            self.revoke(&family).await;
            return Err(CodeFailure::InvalidGrant("refresh_other_client"));
        }
        let tokens = self
            .user_tokens(
                &client,
                &flow,
                &grant.user,
                grant.scope,
                family.clone(),
                Some(grant.until),
            )
            .await?;
        match self
            .signin
            .grants
            .settle_refresh(&family, refresh_token)
            .await
        {
            Ok(true) => Ok(tokens),
            Ok(false) => Err(CodeFailure::InvalidGrant("refresh_replayed")),
            Err(_) => Err(CodeFailure::Unavailable),
        }
    }
}

impl AuthService {
    /// Whether an IdentityProvider `id` is configured (active or not).
    pub fn knows_identity_provider(&self, id: &str) -> bool {
        self.snapshot().identity_providers.contains_key(id)
    }
}
