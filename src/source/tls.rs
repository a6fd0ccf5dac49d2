//! TLS for the source connection: a rustls `ClientConfig` built per `sslmode`, as libpq does.
//!
//! * `require` (without `sslrootcert`): encryption only, no certificate verification;
//! * `verify-ca` (and `require` with `sslrootcert`): chain verified against `sslrootcert`
//!   (default `~/.postgresql/root.crt`), no host name check;
//! * `verify-full`: chain and host name (or IP address) verified.
//!
//! The handshake signature is always checked. The `ring` provider is passed explicitly so no
//! process-wide default provider is needed. Client certificates are loaded from `sslcert` /
//! `sslkey` (default `~/.postgresql/postgresql.crt` / `.key` when they exist).
//! Unlike OpenSSL, webpki has no fallback to the certificate's CN when it has no
//! subjectAltName: `verify-full` needs a SAN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::{ConnInfo, SslMode};
use super::SourceError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn home_file(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rel))
}

fn tls_err(msg: impl Into<String>) -> SourceError {
    SourceError::Tls(msg.into())
}

/// Turns a rustls error into a message in libpq's spirit.
pub fn describe_tls_error(e: &std::io::Error) -> String {
    if let Some(inner) = e.get_ref() {
        if let Some(re) = inner.downcast_ref::<rustls::Error>() {
            return match re {
                rustls::Error::InvalidCertificate(c) => {
                    format!("certificate verify failed: {}", describe_cert_error(c))
                }
                other => other.to_string(),
            };
        }
    }
    e.to_string()
}

fn describe_cert_error(c: &CertificateError) -> String {
    match c {
        CertificateError::UnknownIssuer => {
            "unable to get local issuer certificate (the server certificate is not signed by a CA in sslrootcert)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("server certificate does not match host name ({c})")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("certificate has expired ({c})")
        }
        other => other.to_string(),
    }
}

/// Builds the client config for `info`. Returns a Tls error for unreadable files.
pub fn client_config(info: &ConnInfo) -> Result<Arc<ClientConfig>, SourceError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("could not set up TLS: {e}")))?;

    // libpq: with a root certificate file present, require (and prefer/allow) verify the
    // chain like verify-ca.
    let verify = match info.sslmode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Ca,
        _ if root_cert_present(info) => Verify::Ca,
        _ => Verify::None,
    };

    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(NoVerify(provider.clone())),
        Verify::Ca | Verify::Full => {
            let path = match &info.sslrootcert {
                Some(p) => p.clone(),
                None => home_file(".postgresql/root.crt").ok_or_else(|| {
                    tls_err("could not get home directory to locate root certificate file; either provide the file with sslrootcert or change sslmode to disable server certificate verification")
                })?,
            };
            let roots = load_roots(&path, info.sslmode)?;
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        tls_err(format!(
                            "could not use root certificate file \"{}\": {e}",
                            path.display()
                        ))
                    })?;
            if verify == Verify::Full {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    let (cert, key) = client_cert_paths(info);
    let config = match cert {
        Some(cert_path) => {
            let certs = load_certs(&cert_path)?;
            let key_path = key.ok_or_else(|| {
                tls_err(format!(
                    "certificate present, but not private key file for \"{}\"",
                    cert_path.display()
                ))
            })?;
            let key = load_key(&key_path)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls_err(format!("could not load client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server name used for SNI and verification.
pub fn server_name(
    host: &str,
    sni: bool,
    mode: SslMode,
) -> Result<ServerName<'static>, SourceError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    match ServerName::try_from(host.to_string()) {
        Ok(n) if sni || mode == SslMode::VerifyFull => Ok(n),
        // Without SNI and hostname checks any valid name will do; rustls still needs one.
        // An IP address name makes rustls send no SNI at all.
        _ if mode != SslMode::VerifyFull => Ok(ServerName::IpAddress(
            std::net::IpAddr::from([127, 0, 0, 1]).into(),
        )),
        _ => Err(tls_err(format!(
            "host name \"{host}\" is not valid for certificate verification"
        ))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    None,
    Ca,
    Full,
}

fn root_cert_present(info: &ConnInfo) -> bool {
    match &info.sslrootcert {
        Some(p) => p.exists(),
        None => home_file(".postgresql/root.crt").is_some_and(|p| p.is_file()),
    }
}

fn client_cert_paths(info: &ConnInfo) -> (Option<PathBuf>, Option<PathBuf>) {
    let cert = match &info.sslcert {
        Some(c) => Some(c.clone()),
        None => home_file(".postgresql/postgresql.crt").filter(|p| p.is_file()),
    };
    let key = match &info.sslkey {
        Some(k) => Some(k.clone()),
        None => home_file(".postgresql/postgresql.key").filter(|p| p.is_file()),
    };
    (cert, key)
}

fn load_roots(path: &Path, mode: SslMode) -> Result<RootCertStore, SourceError> {
    if !path.exists() {
        return Err(tls_err(format!(
            "root certificate file \"{}\" does not exist; either provide the file with sslrootcert or change sslmode (now \"{}\") to disable server certificate verification",
            path.display(),
            mode.as_str()
        )));
    }
    let certs = load_certs(path)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(tls_err(format!(
            "could not read root certificate file \"{}\": no usable certificate in it",
            path.display()
        )));
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    let data = std::fs::read(path).map_err(|e| {
        tls_err(format!(
            "could not read certificate file \"{}\": {e}",
            path.display()
        ))
    })?;
    let certs = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tls_err(format!(
                "could not parse certificate file \"{}\": {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "no certificate found in file \"{}\"",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SourceError> {
    let data = std::fs::read(path).map_err(|e| {
        tls_err(format!(
            "could not read private key file \"{}\": {e}",
            path.display()
        ))
    })?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| {
            tls_err(format!(
                "could not parse private key file \"{}\": {e}",
                path.display()
            ))
        })?
        .ok_or_else(|| {
            tls_err(format!(
                "no private key found in file \"{}\"",
                path.display()
            ))
        })
}

/// `sslmode=require`: accept any certificate but still check the handshake signature.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// `sslmode=verify-ca`: full chain verification, but a name mismatch is accepted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
