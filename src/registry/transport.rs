//! The read requests a run makes most (manifest GETs and HEADs, blob HEADs), over one pooled HTTP client, with the
//! registry's auth scheme learned once per run.
//!
//! oci-client pings `/v2/` before every request it has no token for, and on a registry without auth it never gets
//! one: every request cost two round trips (issue 12). Here the scheme is asked for once (one `/v2/` ping shared by
//! every concurrent request), then requests go out with what it needs: nothing (anonymous), Basic credentials, or a
//! bearer token fetched once per repository scope. The answers are turned into oci-client's error shapes so that
//! [`super::classify`] stays the one place that decides what a response means.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use prost::bytes::Bytes;
use sha2::Digest as _;
use tokio::sync::OnceCell;

use super::Challenge;

/// The header registries put a manifest's digest in.
const DIGEST_HEADER: &str = "Docker-Content-Digest";

/// How the registry wants reads authenticated, from its `/v2/` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// No challenge: requests go out without credentials.
    Anonymous,
    /// `Basic`, or a challenge that is not a bearer one: credentials (when there are some) on every request.
    Basic,
    /// A token service: one token per repository scope.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A bearer token per scope, each fetched once (concurrent requests for the same scope share the fetch).
type Tokens = Mutex<HashMap<String, Arc<OnceCell<Option<String>>>>>;

/// Read requests to one registry.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    /// `http` or `https`, for the registry host.
    scheme: &'static str,
    host: String,
    auth: Arc<OnceCell<Scheme>>,
    tokens: Arc<Tokens>,
}

/// A manifest's bytes and its digest.
pub(crate) type RawManifest = (Bytes, String);

impl Transport {
    /// Requests to `host` (as the client resolves it) over `http` (plain HTTP when `insecure`).
    pub(crate) fn new(http: reqwest::Client, host: &str, insecure: bool) -> Transport {
        Transport {
            http,
            scheme: if insecure { "http" } else { "https" },
            host: host.to_owned(),
            auth: Arc::default(),
            tokens: Arc::default(),
        }
    }

    /// `scheme://host`, for `r`'s registry as the client resolves it (`docker.io` is `index.docker.io`).
    fn base(&self, r: &Reference) -> String {
        let host = r.resolve_registry();
        let scheme = if host == self.host {
            self.scheme
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    fn url(&self, r: &Reference, kind: &str, what: &str) -> String {
        format!("{}/v2/{}/{kind}/{what}", self.base(r), r.repository())
    }

    /// The registry's scheme, asked for once per run.
    async fn scheme(&self, r: &Reference) -> Result<&Scheme, OciDistributionError> {
        self.auth
            .get_or_try_init(|| async {
                let url = format!("{}/v2/", self.base(r));
                let res = self.http.get(&url).send().await?;
                let challenge = res
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(Challenge::parse);
                Ok(match challenge {
                    None => Scheme::Anonymous,
                    Some(Challenge::Other) => Scheme::Basic,
                    Some(Challenge::Bearer { realm, service, .. }) => {
                        Scheme::Bearer { realm, service }
                    }
                })
            })
            .await
    }

    /// `request` with the credentials the registry wants for `action` (`pull`, `delete`) on `r`'s repository.
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        r: &Reference,
        auth: &RegistryAuth,
        action: &str,
    ) -> Result<reqwest::RequestBuilder, OciDistributionError> {
        Ok(match (self.scheme(r).await?, auth) {
            (Scheme::Anonymous, _) => request,
            (Scheme::Basic, RegistryAuth::Basic(user, password)) => {
                request.basic_auth(user, Some(password))
            }
            (_, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (Scheme::Basic, RegistryAuth::Anonymous) => request,
            (Scheme::Bearer { realm, service }, auth) => {
                let scope = format!("repository:{}:{action}", r.repository());
                match self.token(realm, service.as_deref(), &scope, auth).await? {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                }
            }
        })
    }

    /// The token for `scope`, fetched once.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, OciDistributionError> {
        let cell = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(scope.to_owned())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            Ok::<_, OciDistributionError>(
                fetch_token(&self.http, realm, service, scope, auth).await?,
            )
        })
        .await
        .cloned()
    }

    /// Sends `request` for `r`, authorized, accepting `accept` (when any).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        r: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
    ) -> Result<reqwest::Response, OciDistributionError> {
        let request = if accept.is_empty() {
            request
        } else {
            request.header(http::header::ACCEPT, accept.join(", "))
        };
        Ok(self
            .authorize(request, r, auth, "pull")
            .await?
            .send()
            .await?)
    }

    /// Deletes the manifest `r` names by digest; the registry's answer, whatever its status.
    pub(crate) async fn delete_manifest(
        &self,
        r: &Reference,
        auth: &RegistryAuth,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let url = self.url(r, "manifests", manifest_ref(r));
        let request = self
            .authorize(self.http.delete(&url), r, auth, "delete")
            .await?;
        Ok(request.send().await?)
    }

    /// The digest of the manifest behind `r` (a HEAD; a GET when the registry sends no digest header).
    pub(crate) async fn manifest_digest(
        &self,
        r: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
    ) -> Result<String, OciDistributionError> {
        let url = self.url(r, "manifests", manifest_ref(r));
        let res = self.send(self.http.head(&url), r, auth, accept).await?;
        let status = res.status();
        let header = digest_header(res.headers())?;
        match header {
            Some(digest) if status.is_success() => {
                if let Some(wanted) = r.digest()
                    && same_algorithm(wanted, &digest)
                    && wanted != digest
                {
                    return Err(DigestError::VerificationError {
                        expected: wanted.to_owned(),
                        actual: digest,
                    }
                    .into());
                }
                Ok(digest)
            }
            _ if !status.is_success() => Err(status_error(status, &[], &url)),
            _ => self.manifest(r, auth, accept).await.map(|(_, d)| d),
        }
    }

    /// The manifest behind `r`, checked against the digest the registry reports and the one in `r`.
    pub(crate) async fn manifest(
        &self,
        r: &Reference,
        auth: &RegistryAuth,
        accept: &[&str],
    ) -> Result<RawManifest, OciDistributionError> {
        let url = self.url(r, "manifests", manifest_ref(r));
        let res = self.send(self.http.get(&url), r, auth, accept).await?;
        let status = res.status();
        let header = digest_header(res.headers())?;
        let body = res.bytes().await?;
        if status != http::StatusCode::OK {
            return Err(status_error(status, &body, &url));
        }
        let digest = checked_digest(&body, header, r.digest())?;
        Ok((body, digest))
    }

    /// Whether blob `digest` exists in `r`'s repository.
    pub(crate) async fn blob_exists(
        &self,
        r: &Reference,
        auth: &RegistryAuth,
        digest: &str,
    ) -> Result<bool, OciDistributionError> {
        let url = self.url(r, "blobs", digest);
        let res = self.send(self.http.head(&url), r, auth, &[]).await?;
        match res.status() {
            s if s.is_success() => Ok(true),
            http::StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error(s, &[], &url)),
        }
    }
}

/// A token from a token service (`realm`) for `scope`, with the credentials when there are some; None when the
/// service refuses (the request then goes without, and the registry's 401 says what is wrong).
async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    auth: &RegistryAuth,
) -> Result<Option<String>, reqwest::Error> {
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let mut query = vec![("scope", scope)];
    if let Some(s) = service {
        query.push(("service", s));
    }
    let mut request = http.get(realm).query(&query);
    if let RegistryAuth::Basic(user, password) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let token: Token = response.json().await?;
    Ok(token.token.or(token.access_token))
}

/// The digest, else the tag, else `latest`.
fn manifest_ref(r: &Reference) -> &str {
    r.digest().or(r.tag()).unwrap_or("latest")
}

fn digest_header(headers: &http::HeaderMap) -> Result<Option<String>, OciDistributionError> {
    match headers.get(DIGEST_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|e| OciDistributionError::DigestError(DigestError::InvalidHeader(e)))?;
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
    }
}

fn same_algorithm(a: &str, b: &str) -> bool {
    a.split_once(':').map(|(x, _)| x) == b.split_once(':').map(|(x, _)| x)
}

/// The digest of `body`, checked against the registry's header and the reference's digest (each in its own
/// algorithm), as oci-client checks them.
fn checked_digest(
    body: &[u8],
    header: Option<String>,
    reference: Option<&str>,
) -> Result<String, DigestError> {
    let check = |expected: &str| -> Result<String, DigestError> {
        let (algorithm, _) = expected
            .split_once(':')
            .ok_or(DigestError::MissingAlgorithm)?;
        let hex = match algorithm {
            "sha256" => hex::encode(sha2::Sha256::digest(body)),
            "sha384" => hex::encode(sha2::Sha384::digest(body)),
            "sha512" => hex::encode(sha2::Sha512::digest(body)),
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let actual = format!("{algorithm}:{hex}");
        if actual == expected {
            Ok(actual)
        } else {
            Err(DigestError::VerificationError {
                expected: expected.to_owned(),
                actual,
            })
        }
    };
    if let Some(reference) = reference {
        check(reference)?;
    }
    match header {
        Some(h) => check(&h),
        None => match reference {
            Some(reference) => Ok(reference.to_owned()),
            None => Ok(format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(body))
            )),
        },
    }
}

/// The error for a non-success answer, in the shapes oci-client gives the same answers.
fn status_error(status: http::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    if status == http::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        };
    }
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError {
            envelope,
            url: url.to_owned(),
        };
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_owned(),
        message: String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A token registry on loopback: `/v2/` challenges, `/token` hands out one token per scope (to `user:pw`
    /// only), and manifests and blobs answer only that scope's token. Counts pings and token fetches.
    async fn token_registry() -> (String, Arc<[AtomicUsize; 2]>) {
        use http_body_util::Full;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counts: Arc<[AtomicUsize; 2]> = Arc::default();
        let (realm, shared) = (format!("http://{addr}/token"), counts.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (realm, counts) = (realm.clone(), shared.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (realm, counts) = (realm.clone(), counts.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let action = if req.method() == http::Method::DELETE {
                            "delete"
                        } else {
                            "pull"
                        };
                        let header = |k| {
                            req.headers()
                                .get(k)
                                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                        };
                        let authorization =
                            header(http::header::AUTHORIZATION).unwrap_or("").to_owned();
                        let mut res = http::Response::builder();
                        let body = if path == "/v2/" {
                            counts[0].fetch_add(1, Ordering::SeqCst);
                            res = res.status(401).header(
                                http::header::WWW_AUTHENTICATE,
                                format!(r#"Bearer realm="{realm}",service="reg""#),
                            );
                            String::new()
                        } else if path == "/token" {
                            counts[1].fetch_add(1, Ordering::SeqCst);
                            let query = req.uri().query().unwrap_or("").to_owned();
                            let scope = query
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("scope="))
                                .unwrap_or("");
                            let scope =
                                percent_encoding::percent_decode_str(scope).decode_utf8_lossy();
                            // base64("user:pw")
                            if authorization == "Basic dXNlcjpwdw==" {
                                format!(r#"{{"token":"t-{scope}"}}"#)
                            } else {
                                res = res.status(401);
                                String::new()
                            }
                        } else {
                            let repo = path["/v2/".len()..].split("/blobs/").next().unwrap();
                            let repo = repo.split("/manifests/").next().unwrap();
                            if authorization != format!("Bearer t-repository:{repo}:{action}") {
                                res = res.status(401);
                                String::new()
                            } else if action == "delete" {
                                res = res.status(202);
                                String::new()
                            } else {
                                res = res.header(
                                    DIGEST_HEADER,
                                    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"{}"))),
                                );
                                "{}".to_owned()
                            }
                        };
                        res.body(Full::new(Bytes::from(body)))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (addr, counts)
    }

    // See: issue 12 (a `/v2/` ping before each request).
    #[tokio::test]
    async fn a_token_registry_is_pinged_once_and_asked_once_per_repository() {
        let (addr, counts) = token_registry().await;
        let t = Transport::new(reqwest::Client::new(), &addr, true);
        let auth = RegistryAuth::Basic("user".into(), "pw".into());
        let blob = format!("sha256:{}", "a".repeat(64));
        let checks = (0..6).map(|i| {
            let (t, auth, blob, addr) = (&t, &auth, &blob, &addr);
            async move {
                let r: Reference = format!("{addr}/team/repo{}:x", i % 2).parse().unwrap();
                t.blob_exists(&r, auth, blob).await.unwrap()
                    && t.manifest(&r, auth, &[]).await.unwrap().0 == "{}".as_bytes()
            }
        });
        assert!(
            futures::future::join_all(checks)
                .await
                .into_iter()
                .all(|ok| ok)
        );
        assert_eq!(counts[0].load(Ordering::SeqCst), 1, "pings");
        assert_eq!(counts[1].load(Ordering::SeqCst), 2, "token fetches");

        // A delete asks for a token of its own scope (the registry accepts nothing else), on the same scheme.
        let r: Reference = format!("{addr}/team/repo0@{blob}").parse().unwrap();
        let res = t.delete_manifest(&r, &auth).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::ACCEPTED);
        assert_eq!(counts[0].load(Ordering::SeqCst), 1, "pings");
        assert_eq!(counts[1].load(Ordering::SeqCst), 3, "token fetches");

        // Without the credentials the token service refuses, and the registry's 401 is the answer.
        let t = Transport::new(reqwest::Client::new(), &addr, true);
        let r: Reference = format!("{addr}/team/repo0:x").parse().unwrap();
        assert!(matches!(
            t.blob_exists(&r, &RegistryAuth::Anonymous, &blob).await,
            Err(OciDistributionError::UnauthorizedError { .. })
        ));
    }

    #[test]
    fn digests_are_checked_against_header_and_reference() {
        let body = b"{}";
        let good = format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)));
        let bad = format!("sha256:{}", "0".repeat(64));
        assert_eq!(checked_digest(body, None, None).unwrap(), good);
        assert_eq!(
            checked_digest(body, Some(good.clone()), None).unwrap(),
            good
        );
        assert_eq!(checked_digest(body, None, Some(&good)).unwrap(), good);
        assert!(matches!(
            checked_digest(body, Some(bad.clone()), None),
            Err(DigestError::VerificationError { .. })
        ));
        assert!(matches!(
            checked_digest(body, Some(good.clone()), Some(&bad)),
            Err(DigestError::VerificationError { .. })
        ));
        assert!(matches!(
            checked_digest(body, Some("md5:x".into()), None),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn answers_take_oci_client_shapes() {
        let unknown = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"m"}]}"#;
        assert!(matches!(
            status_error(http::StatusCode::NOT_FOUND, unknown, "u"),
            OciDistributionError::RegistryError { .. }
        ));
        assert!(matches!(
            status_error(http::StatusCode::NOT_FOUND, b"", "u"),
            OciDistributionError::ServerError { code: 404, .. }
        ));
        assert!(matches!(
            status_error(http::StatusCode::UNAUTHORIZED, b"", "u"),
            OciDistributionError::UnauthorizedError { .. }
        ));
        assert!(matches!(
            status_error(http::StatusCode::SERVICE_UNAVAILABLE, b"x", "u"),
            OciDistributionError::ServerError { code: 503, .. }
        ));
    }
}
