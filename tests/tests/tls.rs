//! `rediss://` against a real redis-server with TLS, on both runtimes.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast::tls::rustls::pki_types::pem::PemObject;
use roomcast::tls::rustls::pki_types::CertificateDer;
use roomcast::tls::rustls::{ClientConfig, RootCertStore};
use roomcast::{Builder, Config, Options, PubSubMessage};
use roomcast_tests::RedisServer;

/// A CA and a server certificate for 127.0.0.1, made with the openssl command line.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=roomcast test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

fn tls_server() -> (RedisServer, u16, Arc<ClientConfig>, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    make_certs(dir.path());
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let server = RedisServer::with_args(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &p("server.crt"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.path().join("ca.crt")).unwrap())
        .unwrap();
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, tls_port, Arc::new(client), dir)
}

async fn round_trip(builder: Builder, tokio: bool) {
    let rc = if tokio {
        builder.connect_tokio().await
    } else {
        builder.connect_async_std().await
    }
    .expect("TLS connect");
    let mut m = rc.join("secure", "m").await.unwrap();
    m.wait_live().await;
    rc.publish(PubSubMessage::broadcast("secure", "over tls"))
        .await
        .unwrap();
    assert_eq!(m.next().await.unwrap().data, &b"over tls"[..]);
    rc.health_check(Duration::from_secs(20)).await.unwrap();
}

fn builder(port: u16, client: Arc<ClientConfig>) -> Builder {
    let config = Config {
        pool_size: 1,
        ..Config::from_url(&format!("rediss://127.0.0.1:{port}")).unwrap()
    };
    Builder::new(config).options(Options {
        tls: Some(client),
        ..Options::default()
    })
}

#[test]
fn tls_on_tokio() {
    let (_server, port, client, _dir) = tls_server();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(round_trip(builder(port, client), true));
}

#[test]
fn tls_on_async_std() {
    let (_server, port, client, _dir) = tls_server();
    async_std::task::block_on(round_trip(builder(port, client), false));
}

#[test]
fn untrusted_certificate_is_a_clear_error() {
    let (_server, port, _client, _dir) = tls_server();
    // Default roots: the test CA is not trusted.
    let config = Config {
        pool_size: 1,
        ..Config::from_url(&format!("rediss://127.0.0.1:{port}")).unwrap()
    };
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(Builder::new(config).connect_tokio())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("certificate") || text.contains("Certificate"),
        "{text}"
    );
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let p =
                std::env::temp_dir().join(format!("roomcast-tls-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
