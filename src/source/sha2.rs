//! SHA-224/256/384/512 for the `tls-server-end-point` channel binding data (RFC 5929): the
//! hash of the server's certificate, with the hash function of the certificate's signature
//! algorithm. The digests come from the `sha2` crate, which postgres-protocol already uses
//! for SCRAM.

use ::sha2::Digest;

pub fn sha224(data: &[u8]) -> Vec<u8> {
    ::sha2::Sha224::digest(data).to_vec()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ::sha2::Sha256::digest(data).to_vec()
}

pub fn sha384(data: &[u8]) -> Vec<u8> {
    ::sha2::Sha384::digest(data).to_vec()
}

pub fn sha512(data: &[u8]) -> Vec<u8> {
    ::sha2::Sha512::digest(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn fips_180_examples() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha224(b"abc")),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            hex(&sha384(b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex(&sha512(b"abc")),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }
}
