//! JSON parsing that refuses duplicate object keys.
//!
//! serde_json keeps the last of two equal keys without a word, so `{"sub":"a","sub":"admin"}`
//! reads as `admin` here and possibly as `a` in another component (RFC 7515 §5.2 and
//! RFC 8725 §3.1 ask verifiers to refuse such input). This visitor builds the same
//! `serde_json::Value`, but fails on the second occurrence of a key at any depth — after
//! escapes are decoded, so `"s\u0075b"` counts as `sub`.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrictJsonError {
    /// Not JSON, or not an object at the top.
    Malformed,
    /// An object holds the same key twice.
    DuplicateKey,
}

/// Parses `bytes` as one JSON object, refusing duplicate keys.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        _ if duplicate.get() => Err(StrictJsonError::DuplicateKey),
        _ => Err(StrictJsonError::Malformed),
    }
}

/// Deserializes one value; sets the flag and fails when an object repeats a key.
#[derive(Clone, Copy)]
struct Strict<'f>(&'f Cell<bool>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.0.set(true);
                return Err(de::Error::custom("duplicate key"));
            }
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert_eq!(
            parse_object(br#"{"sub":"a","sub":"admin"}"#),
            Err(StrictJsonError::DuplicateKey)
        );
        assert_eq!(
            parse_object(br#"{"a":{"r":1,"r":2}}"#),
            Err(StrictJsonError::DuplicateKey)
        );
        assert_eq!(
            parse_object(br#"{"a":[{"r":1,"r":2}]}"#),
            Err(StrictJsonError::DuplicateKey)
        );
        assert_eq!(
            parse_object(br#"{"sub":"a","s\u0075b":"admin"}"#),
            Err(StrictJsonError::DuplicateKey)
        );
    }

    #[test]
    fn plain_objects_parse_like_serde_json() {
        let raw = br#"{"sub":"a","n":1,"f":1.5,"neg":-3,"t":true,"z":null,"l":["x",{"k":"v"}]}"#;
        let strict = parse_object(raw).unwrap();
        let loose: Map<String, Value> = serde_json::from_slice(raw).unwrap();
        assert_eq!(strict, loose);
    }

    #[test]
    fn non_objects_and_trailing_bytes_are_malformed() {
        assert_eq!(parse_object(b"[1]"), Err(StrictJsonError::Malformed));
        assert_eq!(parse_object(b"{} x"), Err(StrictJsonError::Malformed));
        assert_eq!(parse_object(b"{\"a\":1"), Err(StrictJsonError::Malformed));
        assert_eq!(
            parse_object(b"\"duplicate key\""),
            Err(StrictJsonError::Malformed)
        );
    }
}
