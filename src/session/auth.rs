//! The session's `Auth` service: registry credentials for the daemon's pulls and pushes, from a [`Keychain`].
//! Only `Credentials` is served; the token-authority methods answer `UNIMPLEMENTED`, which the daemon reads as
//! "no authority" and falls back to credentials.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::Keychain;
use crate::proto::moby::filesync::v1 as pb;

pub(crate) struct AuthService {
    pub(crate) keychain: Arc<dyn Keychain>,
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    #[tracing::instrument(skip_all, fields(host = %req.get_ref().host))]
    async fn credentials(
        &self,
        req: Request<pb::CredentialsRequest>,
    ) -> Result<Response<pb::CredentialsResponse>, Status> {
        let host = &req.get_ref().host;
        match self.keychain.resolve(host).await {
            Ok(Some(cred)) => {
                tracing::debug!("serving credentials for {host}");
                Ok(Response::new(pb::CredentialsResponse {
                    username: cred.username.clone(),
                    secret: cred.secret.expose().to_owned(),
                }))
            }
            // Anonymous: an empty answer.
            Ok(None) => Ok(Response::new(pb::CredentialsResponse::default())),
            Err(e) => Err(Status::unavailable(format!("credentials for {host}: {e}"))),
        }
    }

    async fn fetch_token(
        &self,
        _: Request<pb::FetchTokenRequest>,
    ) -> Result<Response<pb::FetchTokenResponse>, Status> {
        Err(Status::unimplemented("token authority not supported"))
    }

    async fn get_token_authority(
        &self,
        _: Request<pb::GetTokenAuthorityRequest>,
    ) -> Result<Response<pb::GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("token authority not supported"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<pb::VerifyTokenAuthorityRequest>,
    ) -> Result<Response<pb::VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("token authority not supported"))
    }
}
