//! TLS for `rediss://` links, with rustls over any runtime's stream.

use std::io;
use std::sync::Arc;

use futures_rustls::rustls::pki_types::ServerName;
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;

use crate::runtime::BoxedIo;

pub use futures_rustls::rustls;

/// A rustls client configuration trusting the Mozilla roots (webpki-roots): the default when
/// `Options::tls` is not set.
pub fn default_client_config() -> Arc<ClientConfig> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Wraps a connected stream in TLS for `host`.
pub(crate) async fn wrap(
    config: Arc<ClientConfig>,
    host: String,
    io: BoxedIo,
) -> io::Result<BoxedIo> {
    let name = ServerName::try_from(host.clone()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        )
    })?;
    let stream = TlsConnector::from(config).connect(name, io).await?;
    Ok(Box::new(stream))
}
