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
//!
//! Certificate revocation lists (`sslcrl`, `sslcrldir`, default `~/.postgresql/root.crl`) are
//! checked for every certificate of the chain, an expired CRL or a certificate whose issuer has
//! no CRL fails the handshake (OpenSSL's `X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`, as
//! libpq sets them). `ssl_min_protocol_version` / `ssl_max_protocol_version` select among the
//! versions rustls has, TLSv1.2 and TLSv1.3 (the parser rejects a range without either).
//!
//! [`server_end_point`] computes the `tls-server-end-point` channel binding data (RFC 5929).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};

use super::conninfo::{ConnInfo, SslMode, TlsVersion};
use super::{sha2, SourceError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
                rustls::Error::PeerIncompatible(_)
                | rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => {
                    format!("{re} (no TLS protocol version in common with the server: check ssl_min_protocol_version and ssl_max_protocol_version)")
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
        CertificateError::Revoked => {
            "certificate revoked (listed in the certificate revocation list of sslcrl/sslcrldir)"
                .into()
        }
        CertificateError::UnknownRevocationStatus => {
            "unable to get certificate CRL (no certificate revocation list of sslcrl/sslcrldir covers a certificate of the chain)".into()
        }
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            format!("CRL has expired ({c})")
        }
        other => other.to_string(),
    }
}

/// Builds the client config for `info`. Returns a Tls error for unreadable files.
pub fn client_config(info: &ConnInfo) -> Result<Arc<ClientConfig>, SourceError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(info)?)
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
        Verify::None => {
            if info.sslcrl.is_some() || info.sslcrldir.is_some() {
                return Err(tls_err(format!(
                    "sslcrl/sslcrldir cannot be checked because the server certificate is not verified (sslmode \"{}\" without a root certificate): use sslmode=verify-ca or verify-full with sslrootcert",
                    info.sslmode.as_str()
                )));
            }
            Arc::new(NoVerify(provider.clone()))
        }
        Verify::Ca | Verify::Full => {
            let path = match &info.sslrootcert {
                Some(p) => p.clone(),
                None => info.home_file("root.crt").ok_or_else(|| {
                    tls_err("could not get home directory to locate root certificate file; either provide the file with sslrootcert or change sslmode to disable server certificate verification")
                })?,
            };
            let roots = load_roots(&path, info.sslmode)?;
            let crls = load_crls(info)?;
            let mut vb =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !crls.is_empty() {
                vb = vb.with_crls(crls).enforce_revocation_expiration();
            }
            let inner = vb.build().map_err(|e| {
                tls_err(format!(
                    "could not use root certificate file \"{}\" or the certificate revocation lists: {e}",
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
        None => info.home_file("root.crt").is_some_and(|p| p.is_file()),
    }
}

/// The TLS versions allowed by `ssl_min_protocol_version` / `ssl_max_protocol_version` among
/// those rustls has.
fn protocol_versions(
    info: &ConnInfo,
) -> Result<Vec<&'static SupportedProtocolVersion>, SourceError> {
    let min = info.ssl_min_protocol_version;
    let max = info.ssl_max_protocol_version.unwrap_or(TlsVersion::V1_3);
    let mut v: Vec<&'static SupportedProtocolVersion> = Vec::new();
    if min <= TlsVersion::V1_2 && max >= TlsVersion::V1_2 {
        v.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::V1_3 {
        v.push(&rustls::version::TLS13);
    }
    if v.is_empty() {
        return Err(tls_err(format!(
            "no supported TLS protocol version between ssl_min_protocol_version \"{}\" and ssl_max_protocol_version \"{}\" (only TLSv1.2 and TLSv1.3 are available)",
            min.as_str(),
            max.as_str()
        )));
    }
    Ok(v)
}

/// The CRLs of `sslcrl` and `sslcrldir` (PEM), else of `~/.postgresql/root.crl` if it exists.
/// An explicitly given file or directory that cannot be read is an error (libpq would quietly
/// check nothing).
fn load_crls(info: &ConnInfo) -> Result<Vec<CertificateRevocationListDer<'static>>, SourceError> {
    let mut out = Vec::new();
    let explicit = info.sslcrl.is_some() || info.sslcrldir.is_some();
    if let Some(f) = &info.sslcrl {
        let crls = read_crls(f)?;
        if crls.is_empty() {
            return Err(tls_err(format!(
                "no certificate revocation list found in file \"{}\"",
                f.display()
            )));
        }
        out.extend(crls);
    }
    if let Some(d) = &info.sslcrldir {
        let entries = std::fs::read_dir(d).map_err(|e| {
            tls_err(format!(
                "could not read certificate revocation list directory \"{}\": {e}",
                d.display()
            ))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            // Other files (e.g. certificates) may live there too: only CRLs count.
            out.extend(read_crls(&f).unwrap_or_default());
        }
    }
    if !explicit {
        if let Some(f) = info.home_file("root.crl").filter(|p| p.is_file()) {
            out.extend(read_crls(&f)?);
        }
    }
    Ok(out)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, SourceError> {
    let data = std::fs::read(path).map_err(|e| {
        tls_err(format!(
            "could not read certificate revocation list file \"{}\": {e}",
            path.display()
        ))
    })?;
    rustls_pemfile::crls(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tls_err(format!(
                "could not parse certificate revocation list file \"{}\": {e}",
                path.display()
            ))
        })
}

fn client_cert_paths(info: &ConnInfo) -> (Option<PathBuf>, Option<PathBuf>) {
    let cert = match &info.sslcert {
        Some(c) => Some(c.clone()),
        None => info.home_file("postgresql.crt").filter(|p| p.is_file()),
    };
    let key = match &info.sslkey {
        Some(k) => Some(k.clone()),
        None => info.home_file("postgresql.key").filter(|p| p.is_file()),
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
    if data.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(tls_err(format!(
            "private key file \"{}\" is encrypted: encrypted client keys are not supported, use a key file without a passphrase",
            path.display()
        )));
    }
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

type HashFn = fn(&[u8]) -> Vec<u8>;

/// The `tls-server-end-point` channel binding data of RFC 5929 for the server's certificate
/// (DER): its hash with the hash function of its signature algorithm, SHA-256 for MD5 and
/// SHA-1. `Err` says why there is none (an algorithm without a single hash function, such as
/// RSASSA-PSS or Ed25519, for which the PostgreSQL server cannot compute it either).
pub fn server_end_point(cert: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm_oid(cert)
        .ok_or_else(|| "the server certificate could not be parsed".to_string())?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
    const OIW_SHA1_RSA: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1d];
    let last = |prefix: &[u8]| -> Option<u8> {
        oid.strip_prefix(prefix)
            .filter(|r| r.len() == 1)
            .map(|r| r[0])
    };
    let hash: Option<HashFn> = if oid == ECDSA_SHA1 || oid == DSA_SHA1 || oid == OIW_SHA1_RSA {
        Some(sha2::sha256)
    } else if let Some(n) = last(RSA) {
        match n {
            4 | 5 | 11 => Some(sha2::sha256),
            12 => Some(sha2::sha384),
            13 => Some(sha2::sha512),
            14 => Some(sha2::sha224),
            _ => None,
        }
    } else if let Some(n) = last(ECDSA_SHA2).or_else(|| last(NIST_SIG)) {
        match n {
            1 => Some(sha2::sha224),
            2 => Some(sha2::sha256),
            3 => Some(sha2::sha384),
            4 => Some(sha2::sha512),
            _ => None,
        }
    } else {
        None
    };
    match hash {
        Some(h) => Ok(h(cert)),
        None => Err(format!(
            "the server certificate's signature algorithm (OID {}) has no hash function for tls-server-end-point channel binding",
            oid_string(oid)
        )),
    }
}

/// One DER element: (tag, contents, what follows).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[hdr..end], &b[end..]))
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280), in DER.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (t, body, _) = der_tlv(cert)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, _tbs, rest) = der_tlv(body)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, alg, _) = der_tlv(rest)?;
    if t != SEQUENCE {
        return None;
    }
    let (t, oid, _) = der_tlv(alg)?;
    (t == OID).then_some(oid)
}

/// Dotted form of a DER OID, for messages.
fn oid_string(oid: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (v / 40).min(2);
                parts.push(first.to_string());
                parts.push((v - first * 40).to_string());
            } else {
                parts.push(v.to_string());
            }
            v = 0;
        }
    }
    parts.join(".")
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

#[cfg(test)]
mod tests {
    use super::super::conninfo::MapEnv;
    use super::*;

    /// DER TLV with a definite length (short or long form).
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let n = content.len();
        if n < 0x80 {
            v.push(n as u8);
        } else if n < 0x100 {
            v.extend([0x81, n as u8]);
        } else {
            v.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        v.extend_from_slice(content);
        v
    }

    /// A certificate-shaped DER: SEQUENCE { tbs, AlgorithmIdentifier { oid }, BIT STRING }.
    fn fake_cert(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let tbs = tlv(0x30, &vec![0x05; tbs_len]);
        let alg = tlv(0x30, &[tlv(0x06, oid), vec![0x05, 0x00]].concat());
        let sig = tlv(0x03, &[0x00, 0xde, 0xad]);
        tlv(0x30, &[tbs, alg, sig].concat())
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let rsa = |n: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n];
        let ecdsa = |n: u8| vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, n];
        type Hash = fn(&[u8]) -> Vec<u8>;
        let cases: Vec<(Vec<u8>, Hash)> = vec![
            (rsa(4), sha2::sha256),  // md5WithRSAEncryption: SHA-256
            (rsa(5), sha2::sha256),  // sha1WithRSAEncryption: SHA-256
            (rsa(11), sha2::sha256), // sha256WithRSAEncryption
            (rsa(12), sha2::sha384),
            (rsa(13), sha2::sha512),
            (rsa(14), sha2::sha224),
            (vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], sha2::sha256), // ecdsa-with-SHA1
            (ecdsa(1), sha2::sha224),
            (ecdsa(2), sha2::sha256),
            (ecdsa(3), sha2::sha384),
            (ecdsa(4), sha2::sha512),
        ];
        for tbs_len in [10, 300] {
            for (oid, h) in &cases {
                let cert = fake_cert(oid, tbs_len);
                assert_eq!(
                    server_end_point(&cert).unwrap(),
                    h(&cert),
                    "oid {}",
                    oid_string(oid)
                );
            }
        }
        // No single hash function: RSASSA-PSS, Ed25519.
        let e = server_end_point(&fake_cert(&rsa(10), 10)).unwrap_err();
        assert!(e.contains("OID 1.2.840.113549.1.1.10"), "{e}");
        let e = server_end_point(&fake_cert(&[0x2b, 0x65, 0x70], 10)).unwrap_err();
        assert!(e.contains("OID 1.3.101.112"), "{e}");
        // Not a certificate.
        assert!(server_end_point(b"\x30\x05\x01").is_err());
        assert!(server_end_point(&[]).is_err());
        let mut truncated = fake_cert(&ecdsa(2), 300);
        truncated.truncate(100);
        assert!(server_end_point(&truncated).is_err());
    }

    #[test]
    fn protocol_versions_follow_the_range() {
        let v = |s: &str| {
            let info = ConnInfo::parse_with_env(s, &MapEnv::new().with_os_user("u")).unwrap();
            protocol_versions(&info)
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>()
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v("host=h"), vec![TLSv1_2, TLSv1_3]);
        assert_eq!(
            v("host=h ssl_min_protocol_version=TLSv1"),
            vec![TLSv1_2, TLSv1_3]
        );
        assert_eq!(v("host=h ssl_min_protocol_version=TLSv1.3"), vec![TLSv1_3]);
        assert_eq!(v("host=h ssl_max_protocol_version=TLSv1.2"), vec![TLSv1_2]);
        assert_eq!(
            v("host=h ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=TLSv1.3"),
            vec![TLSv1_2, TLSv1_3]
        );
    }

    #[test]
    fn crl_without_verification_is_an_error() {
        let info = ConnInfo::parse_with_env(
            "host=h sslmode=require sslcrl=/x.crl sslrootcert=/nonexistent/root.crt",
            &MapEnv::new().with_os_user("u"),
        )
        .unwrap();
        let e = client_config(&info).err().unwrap().to_string();
        assert!(e.contains("sslcrl/sslcrldir cannot be checked"), "{e}");
    }
}
