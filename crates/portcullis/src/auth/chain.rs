//! Several authenticators, tried in order.

use std::sync::Arc;

use http::request::Parts;

use super::{AuthOutcome, Authenticator, BoxFuture};

/// Tries authenticators in order: the first that finds credentials decides. A refusal from
/// one that found credentials is final — a bad token is not retried as an API key, so a
/// request cannot shop for the weakest check.
///
/// ```
/// use portcullis::auth::{AnyOf, Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator}};
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
/// let jwt = JwtAuthenticator::builder().issuer("me").audience("api")
///     .key(VerificationKey::hmac(Algorithm::HS256, &Secret::from("0123456789abcdef0123456789abcdef")).unwrap())
///     .build().unwrap();
/// let keys = ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_x"), ["deploy"]).unwrap()]).unwrap();
/// let both = AnyOf::new().or(jwt).or(keys);
/// assert_eq!(both.len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct AnyOf {
    chain: Vec<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for AnyOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyOf")
            .field("authenticators", &self.chain.len())
            .finish()
    }
}

impl AnyOf {
    /// An empty chain (it finds no credentials).
    ///
    /// ```
    /// use portcullis::auth::{AnyOf, AuthOutcome, Authenticator};
    /// let none = AnyOf::new();
    /// assert!(none.is_empty());
    /// let (parts, ()) = http::Request::new(()).into_parts();
    /// assert!(matches!(none.authenticate_now(&parts), Some(AuthOutcome::NoCredentials)));
    /// ```
    pub fn new() -> Self {
        AnyOf::default()
    }

    /// Appends an authenticator.
    ///
    /// ```
    /// use portcullis::auth::{AnyOf, AuthOutcome, Authenticator};
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// let keys = ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap()]).unwrap();
    /// let chain = AnyOf::new().or(keys);
    /// let (parts, ()) = http::Request::get("/").header("x-api-key", "pk_test_only").body(()).unwrap().into_parts();
    /// match chain.authenticate_now(&parts) {
    ///     Some(AuthOutcome::Authenticated(p)) => assert_eq!(p.id, "ci"),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// ```
    #[must_use]
    pub fn or(self, auth: impl Authenticator) -> Self {
        self.or_shared(Arc::new(auth))
    }

    /// Appends a shared authenticator.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::auth::{AnyOf, Authenticator};
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// let keys: Arc<dyn Authenticator> = Arc::new(
    ///     ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap()]).unwrap(),
    /// );
    /// // The same authenticator in two chains.
    /// let a = AnyOf::new().or_shared(keys.clone());
    /// let b = AnyOf::new().or_shared(keys);
    /// assert_eq!((a.len(), b.len()), (1, 1));
    /// ```
    #[must_use]
    pub fn or_shared(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.chain.push(auth);
        self
    }

    /// The number of authenticators.
    ///
    /// ```
    /// use portcullis::auth::AnyOf;
    /// use portcullis::auth::api_key::ApiKeyAuthenticator;
    /// let no_keys = || ApiKeyAuthenticator::new([]).unwrap();
    /// assert_eq!(AnyOf::new().or(no_keys()).or(no_keys()).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.chain.len()
    }

    /// True when the chain is empty.
    ///
    /// ```
    /// use portcullis::auth::AnyOf;
    /// use portcullis::auth::api_key::ApiKeyAuthenticator;
    /// assert!(AnyOf::new().is_empty());
    /// assert!(!AnyOf::new().or(ApiKeyAuthenticator::new([]).unwrap()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }
}

impl Authenticator for AnyOf {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            for auth in &self.chain {
                match auth.authenticate(parts).await {
                    AuthOutcome::NoCredentials => continue,
                    decided => return decided,
                }
            }
            AuthOutcome::NoCredentials
        })
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        for auth in &self.chain {
            match auth.authenticate_now(parts)? {
                AuthOutcome::NoCredentials => continue,
                decided => return Some(decided),
            }
        }
        Some(AuthOutcome::NoCredentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Principal};

    struct Fixed(AuthOutcome);
    impl Authenticator for Fixed {
        fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
            Box::pin(std::future::ready(self.0.clone()))
        }
    }

    fn run(chain: &AnyOf) -> AuthOutcome {
        let (parts, ()) = http::Request::new(()).into_parts();
        futures_util::FutureExt::now_or_never(chain.authenticate(&parts)).expect("ready")
    }

    #[test]
    fn first_with_credentials_wins_and_refusals_are_final() {
        let ok = || {
            Fixed(AuthOutcome::Authenticated(Principal::new(
                "a",
                ["r"],
                AuthMethod::Custom,
            )))
        };
        let none = || Fixed(AuthOutcome::NoCredentials);
        let bad = || Fixed(AuthOutcome::Invalid("bad"));
        assert!(matches!(
            run(&AnyOf::new().or(none()).or(ok())),
            AuthOutcome::Authenticated(_)
        ));
        assert!(matches!(
            run(&AnyOf::new().or(bad()).or(ok())),
            AuthOutcome::Invalid("bad")
        ));
        assert!(matches!(
            run(&AnyOf::new().or(none()).or(none())),
            AuthOutcome::NoCredentials
        ));
        assert!(matches!(run(&AnyOf::new()), AuthOutcome::NoCredentials));
    }

    /// Answers at once as well.
    struct Known(AuthOutcome);
    impl Authenticator for Known {
        fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
            Box::pin(std::future::ready(self.0.clone()))
        }
        fn authenticate_now(&self, _: &Parts) -> Option<AuthOutcome> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn the_chain_answers_at_once_only_when_every_member_asked_does() {
        let (parts, ()) = http::Request::new(()).into_parts();
        let now = |chain: &AnyOf| chain.authenticate_now(&parts);
        let none = || Known(AuthOutcome::NoCredentials);
        // Anonymous through members that all answer at once: no future at all.
        assert!(matches!(
            now(&AnyOf::new().or(none()).or(none())),
            Some(AuthOutcome::NoCredentials)
        ));
        // A member that must be awaited: the chain must be too (from the start).
        assert!(
            now(&AnyOf::new()
                .or(none())
                .or(Fixed(AuthOutcome::NoCredentials)))
            .is_none()
        );
        // A decision before it is final, as in `authenticate`.
        assert!(matches!(
            now(&AnyOf::new()
                .or(Known(AuthOutcome::Invalid("bad")))
                .or(Fixed(AuthOutcome::NoCredentials))),
            Some(AuthOutcome::Invalid("bad"))
        ));
        assert!(matches!(
            now(&AnyOf::new()),
            Some(AuthOutcome::NoCredentials)
        ));
    }
}
