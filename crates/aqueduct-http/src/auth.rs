//! API keys: a request carries one as `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`. Checking takes the same time whatever the key sent
//! (each configured key is compared byte by byte to its own length, every
//! time), so the time of a 401 says nothing about how close a guess was.

use std::hint::black_box;

use hyper::header::{HeaderMap, AUTHORIZATION};

/// The header a key may also come in.
const KEY_HEADER: &str = "x-api-key";

/// The keys a server accepts (none: every request is let in).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl ApiKeys {
    /// The keys given; empty ones are left out (they would let in anyone
    /// who sends an empty header).
    pub fn new(keys: impl IntoIterator<Item = String>) -> ApiKeys {
        ApiKeys {
            keys: keys
                .into_iter()
                .map(String::into_bytes)
                .filter(|k| !k.is_empty())
                .collect(),
        }
    }

    /// True when no key is needed.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the request's headers carry one of the keys.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if self.is_open() {
            return true;
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        let header = headers.get(KEY_HEADER).map(|v| v.as_bytes());
        let mut admitted = false;
        for given in [bearer, header].into_iter().flatten() {
            admitted |= self.matches(given);
        }
        admitted
    }

    /// Whether `given` is one of the keys, in time that depends only on the
    /// keys' lengths.
    fn matches(&self, given: &[u8]) -> bool {
        let mut found = 0u8;
        for key in &self.keys {
            let mut diff = u8::from(key.len() != given.len());
            for (i, &k) in key.iter().enumerate() {
                diff |= k ^ given.get(i).copied().unwrap_or(0);
            }
            found |= u8::from(black_box(diff) == 0);
        }
        found == 1
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any
/// case, RFC 9110 §11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (name, value) in pairs {
            out.append(*name, HeaderValue::from_static(value));
        }
        out
    }

    #[test]
    fn a_key_in_either_header_is_admitted_and_no_other() {
        let keys = ApiKeys::new(["s3cret".to_owned(), "other-key".to_owned()]);
        assert!(keys.admits(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(keys.admits(&headers(&[("authorization", "bearer   other-key ")])));
        assert!(keys.admits(&headers(&[("x-api-key", "s3cret")])));
        for refused in [
            &[][..],
            &[("authorization", "Bearer s3cre")],
            &[("authorization", "Bearer s3cret2")],
            &[("authorization", "Basic s3cret")],
            &[("authorization", "s3cret")],
            &[("authorization", "Bearer ")],
            &[("x-api-key", "")],
            &[("x-api-key", "S3CRET")],
        ] {
            assert!(!keys.admits(&headers(refused)), "{refused:?}");
        }
    }

    #[test]
    fn without_keys_everyone_is_admitted_and_empty_keys_are_no_keys() {
        assert!(ApiKeys::default().admits(&HeaderMap::new()));
        let empty = ApiKeys::new([String::new()]);
        assert!(empty.is_open());
    }
}
