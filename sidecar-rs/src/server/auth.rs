//! Brain→sidecar authentication on TCP: a bearer token every data-plane RPC
//! must carry. (The unix socket relies on its 0600 file mode instead, and
//! health checks stay open so kubelet probes need no secret.)

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A tonic interceptor that admits requests carrying
/// `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Arc<[u8]>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth([redacted])")
    }
}

impl BearerAuth {
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < 16 {
            return Err("the auth token must be at least 16 characters".into());
        }
        Ok(Self {
            expected: format!("Bearer {token}").into_bytes().into(),
        })
    }

    /// Reads the token from a file (a mounted Kubernetes Secret).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-token-file {}: {e}", path.display()))?;
        Self::new(&token)
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get("authorization") {
            // Constant time: the comparison must not reveal how much matched.
            Some(value) if bool::from(value.as_bytes().ct_eq(&self.expected)) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>'",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn request(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn checks_the_bearer_token() {
        let mut auth = BearerAuth::new("0123456789abcdef\n").unwrap();
        assert!(auth.call(request(Some("Bearer 0123456789abcdef"))).is_ok());
        let wrong = auth
            .call(request(Some("Bearer 0123456789abcdeX")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = auth.call(request(None)).unwrap_err();
        assert!(missing.message().contains("Bearer"));
        assert!(BearerAuth::new("short").is_err());
    }
}
