//! rustls client configuration: roots, versions, optional client certificate.
//!
//! The crypto provider is aws-lc-rs, chosen on purpose: it is rustls' default and best-maintained
//! backend, it has a FIPS-validated build (ElastiCache users in regulated accounts ask for FIPS;
//! stunnel's recipe even carries `fips = no`), it offers the post-quantum hybrid key exchange
//! X25519MLKEM768, and its AES-GCM is the faster of the two backends on x86_64, which matters on
//! the forwarding path. `ring` would build faster but buys nothing at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Lowest TLS version offered. TLS 1.3 is always offered; 1.2 only when allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// What a `[tls]` section asks for, with files not yet read.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub min_version: Option<MinVersion>,
    pub insecure_skip_verify: bool,
}

/// Why a TLS configuration could not be built; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("no PEM certificate found in {path}")]
    NoCertificates { field: &'static str, path: PathBuf },
    #[error("cannot read a PEM private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("client_cert and client_key must be given together")]
    HalfClientPair,
    /// The rustls error is in the message, so it is not also a `source()` (a chain printer
    /// would show it twice).
    #[error("rejected by rustls: {0}")]
    Rustls(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

impl TlsError {
    /// The `[tls]` key whose value caused the error, for config messages.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Certificates { field, .. } | TlsError::NoCertificates { field, .. } => field,
            TlsError::Key { .. } | TlsError::HalfClientPair => "client_key",
            TlsError::Rustls(_) => "client_cert",
        }
    }
}

/// The provider every connection uses; see the module note for why aws-lc-rs. Its key-exchange
/// groups are listed here rather than left to rustls' `prefer-post-quantum` feature, which any
/// crate in the build may turn on (aws-config's HTTP client does): X25519 first, as measured in
/// the README's tables (one key share per handshake), X25519MLKEM768 offered for a server that
/// asks for it.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
        kx_group::X25519MLKEM768,
    ];
    Arc::new(p)
}

/// Builds the client configuration once per listener. rustls keeps its session-resumption cache
/// inside the config, so sharing one `Arc` is what lets later handshakes resume.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.min_version {
        Some(MinVersion::Tls13) => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .with_root_certificates(root_store(opts.ca_file.as_deref())?);
    let mut config = match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(read_certs("client_cert", cert)?, read_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfClientPair),
    };
    if opts.insecure_skip_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(SkipVerify(provider)));
    }
    Ok(Arc::new(config))
}

/// `ca_file` replaces the built-in Mozilla roots rather than adding to them: a private CA is
/// the whole trust decision for that endpoint.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut store = RootCertStore::empty();
    for cert in read_certs("ca_file", path)? {
        store.add(cert).map_err(|e| TlsError::Certificates {
            field: "ca_file",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            field,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            field,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// `insecure_skip_verify = true`: accept any certificate and name, but still check that the
/// handshake is signed by the key in the certificate presented, so the session is at least
/// bound to that certificate.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate's notAfter as Unix time, for the expiry metric.
pub fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}
