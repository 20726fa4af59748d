//! The session a probe serves: its id and the secret token every subscriber and
//! every WASM filter must present.

#[derive(Clone)]
pub struct Session {
    pub id: String,
    token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(id: String, token: String) -> Self {
        Self { id, token }
    }

    /// Compares in time independent of where the strings differ, so that the
    /// token cannot be guessed byte by byte from response times.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let expected = self.token.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        presented
            .iter()
            .zip(expected)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_verifies() {
        let session = Session::new("s1".into(), "secret-token".into());
        assert!(session.verify(b"secret-token"));
        assert!(!session.verify(b"secret-tokeN"));
        assert!(!session.verify(b"secret"));
        assert!(!session.verify(b""));
        assert!(!format!("{session:?}").contains("secret-token"));
    }
}
