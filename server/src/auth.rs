//! Who may sync: every transport asks [`Auth::check`] with the token it got
//! and the store the client names, before the store is opened.

/// What a token grants on one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// May push (otherwise only read and follow).
    pub write: bool,
}

/// Why a client is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or wrong token; pass the server's token")]
    Unauthorized,
}

/// The server's accepted tokens. Empty: open mode (loopback only, which
/// [`crate::Config::check`] enforces): everyone may read and write.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Vec<String>,
}

impl Auth {
    pub fn new(tokens: Vec<String>) -> Auth {
        Auth { tokens }
    }

    /// Whether the server runs without tokens.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// What `token` grants on `store`.
    pub fn check(&self, token: Option<&str>, store: &str) -> Result<Grant, AuthError> {
        let _ = store;
        let ok = self.is_open()
            || token.is_some_and(|t| self.tokens.iter().any(|e| token_matches(t, e)));
        if ok {
            Ok(Grant { write: true })
        } else {
            Err(AuthError::Unauthorized)
        }
    }
}

/// Compares tokens in time independent of where they differ and of the
/// expected token's length (the given token sets the number of steps).
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let auth = Auth::new(vec!["s3cret-token-0123".into()]);
        assert!(auth.check(Some("s3cret-token-0123"), "default").is_ok());
        for wrong in [
            "s3cret-token-012",
            "s3cret-token-01234",
            "",
            "S3cret-token-0123",
        ] {
            assert_eq!(
                auth.check(Some(wrong), "default"),
                Err(AuthError::Unauthorized),
                "{wrong:?}"
            );
        }
        assert_eq!(auth.check(None, "default"), Err(AuthError::Unauthorized));
        assert!(Auth::default().check(None, "default").unwrap().write);
    }
}
