//! Sign-in through an external OpenID provider (docs/sign-in.md). fhirbox
//! is the authorization server an application talks to (RFC 6749 §4.1 with
//! PKCE, RFC 7636) and the client of the hospital's provider (OpenID
//! Connect Core §3.1). This module holds the decisions; the routes that
//! carry them over HTTP live in the server (`server/src/auth/signin.rs`).

pub mod codes;
pub mod flow;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clients::Grant;
use crate::identity_provider::IdentityProvider;
use crate::token::now_seconds;
use crate::users::{self, UserRecord};
use crate::AuthService;
use codes::{random_text, verifier_matches, CodeGrant, Codes};
use flow::{Approved, AuthorizeError, Flow, FLOW_TTL};
use provider::{ProviderClient, ProviderUser, SignInFailure};

/// What sign-in keeps between requests on one instance.
pub struct SignIn {
    codes: Codes,
    provider: ProviderClient,
}

impl SignIn {
    pub fn new(timeout: Duration) -> SignIn {
        SignIn {
            codes: Codes::default(),
            provider: ProviderClient::new(timeout),
        }
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

/// Why a code exchange was refused (RFC 6749 §5.2 `invalid_grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFailure {
    /// Unknown, used, expired, or issued to another client or redirect URI.
    InvalidGrant(&'static str),
    /// The client may not use this grant.
    UnauthorizedClient,
}

/// The User a sign-in names is inactive: it may not sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InactiveUser;

/// An access token issued for a user.
pub struct UserToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: Option<String>,
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
        cookie: Option<&str>,
        code: Option<&str>,
        provider_error: Option<&str>,
    ) -> Result<Finished, CallbackFailure> {
        let flow = cookie
            .and_then(|value| Flow::open(value, |json| self.flow_tag(json), now_seconds()))
            .filter(|flow| flow.idp == idp)
            .ok_or(CallbackFailure {
                app: None,
                reason: "signin_state",
                error: "invalid_request",
                description: "this sign-in was not started in this browser, or took longer than 10 minutes; start again from the application",
            })?;
        let app = Some(flow.app.clone());
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

    /// The User a finished sign-in is, and the body to store for it when it
    /// is new or its claims changed. `Err` when that User is inactive.
    pub fn signed_in_user(
        &self,
        finished: &Finished,
    ) -> Result<(String, Option<Value>), InactiveUser> {
        let system = finished.identity_provider.user_system();
        let id = users::user_id(&system, &finished.user.sub);
        let existing = self.snapshot().users.get(&id).cloned();
        if existing.as_ref().is_some_and(|u| !u.active) {
            return Err(InactiveUser);
        }
        let body = users::signed_in_body(
            existing.as_ref().map(|u| &u.body),
            &id,
            &system,
            &finished.user.sub,
            &finished.user.claims,
        );
        Ok((id, body))
    }

    /// A code for the application, standing for `user`; `None` when too
    /// many codes are waiting.
    pub fn issue_code(&self, app: &Approved, user: &str) -> Option<String> {
        self.signin.codes.issue(CodeGrant::new(
            app.client_id.clone(),
            app.redirect_uri.clone(),
            app.code_challenge.clone(),
            user.to_owned(),
            app.scope.clone(),
        ))
    }

    /// `grant_type=authorization_code` at `/auth/token` (RFC 6749 §4.1.3):
    /// `client_id` is the authenticated client, or a public one naming
    /// itself; the code is used up by this call whatever its outcome.
    pub fn exchange_code(
        &self,
        client_id: &str,
        authenticated: bool,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<UserToken, CodeFailure> {
        let snapshot = self.snapshot();
        let client = snapshot
            .clients
            .get(client_id)
            .filter(|c| c.active && c.allows(Grant::AuthorizationCode))
            .ok_or(CodeFailure::UnauthorizedClient)?;
        let Ok(Some(flow)) = &client.code_flow else {
            return Err(CodeFailure::UnauthorizedClient);
        };
        if !authenticated && (client.has_secret() || flow.secret_required) {
            return Err(CodeFailure::UnauthorizedClient);
        }
        let grant = self
            .signin
            .codes
            .take(code)
            .ok_or(CodeFailure::InvalidGrant("code_unknown"))?;
        if grant.client_id != client.id {
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
        let user = snapshot
            .users
            .get(&grant.user)
            .filter(|u| u.active)
            .ok_or(CodeFailure::InvalidGrant("user_inactive"))?;
        let (access_token, _) = self.signer.issue_for_user(
            &client.id,
            &client.version_id.to_string(),
            &user.id,
            flow.token_lifetime,
        );
        Ok(UserToken {
            access_token,
            expires_in: flow.token_lifetime,
            scope: grant.scope,
        })
    }

    /// The User `id`, as last loaded.
    pub fn user(&self, id: &str) -> Option<Arc<UserRecord>> {
        self.snapshot().users.get(id).cloned()
    }
}

impl AuthService {
    /// Whether an IdentityProvider `id` is configured (active or not).
    pub fn knows_identity_provider(&self, id: &str) -> bool {
        self.snapshot().identity_providers.contains_key(id)
    }
}
