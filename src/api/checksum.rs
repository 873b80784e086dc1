//! The checksum Claude Code computes over its managed settings and policy limits, reproduced exactly:
//! `"sha256:" + hex(sha256(JSON.stringify(value with object keys sorted recursively)))`.
//!
//! `canonical` writes that JavaScript text: no whitespace, keys in the order a JavaScript object built from the
//! sorted keys iterates them, numbers as `Number.prototype.toString` writes them, strings as `JSON.stringify`
//! escapes them. Serving this very text makes the checksum of the raw body and of the parsed body the same.

use std::cmp::Ordering;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `sha256:HEX` of `canonical(value)`, as the client computes it (and sends back in `If-None-Match`).
pub fn checksum(value: &Value) -> String {
    checksum_of_text(&canonical(value))
}

/// `sha256:HEX` of text already in the canonical form.
pub fn checksum_of_text(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// `JSON.stringify` of `value` with its object keys sorted recursively, as the client builds it.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(integer), _, _) => out.push_str(&js_number(integer as f64)),
            (_, Some(integer), _) => out.push_str(&js_number(integer as f64)),
            (_, _, Some(float)) => out.push_str(&js_number(float)),
            // Without `arbitrary_precision` every number is one of the three.
            (None, None, None) => out.push_str("null"),
        },
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (index, key) in ordered_keys(map).into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// `JSON.stringify`'s string escaping: `"`, `\` and the control characters below U+0020 (`\b \f \n \r \t`, the
/// rest `\u00xx`); nothing else, not U+007F, U+2028 or non-ASCII. serde_json escapes exactly these, the same way.
/// (Lone surrogates, which `JSON.stringify` writes as `\udxxx`, cannot occur in a Rust string.)
fn write_string(text: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(text).expect("a string always serializes"));
}

/// The keys in the order `JSON.stringify` visits them on the client's sorted copy: `Object.keys(o).sort()`
/// compares UTF-16 code units, then the copy, a plain object, iterates its array-index keys (`"0"`…`"4294967294"`)
/// first, in numeric order, and the other keys in insertion (sorted) order.
fn ordered_keys(map: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_by(|a, b| utf16_order(a, b));
    let (mut indices, names): (Vec<&str>, Vec<&str>) = keys.into_iter().partition(|key| array_index(key).is_some());
    indices.sort_by_key(|key| array_index(key));
    indices.extend(names);
    indices
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A key JavaScript treats as an array index: the canonical decimal form of an integer below 2^32 − 1.
fn array_index(key: &str) -> Option<u32> {
    let value: u32 = key.parse().ok()?;
    (value != u32::MAX && value.to_string() == key).then_some(value)
}

/// `Number.prototype.toString` for a finite number (ECMAScript Number::toString, radix 10): the shortest digits
/// that round-trip, in plain notation for decimal exponents from −6 to 20 and `d.ddde±x` outside; −0 is `0`.
pub fn js_number(value: f64) -> String {
    if !value.is_finite() {
        // Refused when the config is read; `JSON.stringify` writes them `null`.
        return "null".to_owned();
    }
    if value == 0.0 {
        return "0".to_owned();
    }
    // Rust's `{:e}` writes the shortest round-tripping digits: `d.ddddde-7`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} writes an exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().expect("{:e} writes an integer exponent");
    let k = digits.len() as i32;
    let n = exponent + 1;
    let mut out = String::new();
    if value < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.push_str(&"0".repeat((n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        out.push('e');
        out.push(if e >= 0 { '+' } else { '-' });
        out.push_str(&e.abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (2.5e300, "2.5e+300"),
            (9007199254740991.0, "9007199254740991"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
        ];
        for (value, expected) in cases {
            assert_eq!(js_number(*value), *expected, "{value:e}");
        }
    }

    #[test]
    fn strings_escape_what_json_stringify_escapes_and_nothing_else() {
        let value = json!("q\" b\\ \u{8}\u{c}\n\r\t \u{1} \u{1f} \u{7f} é \u{2028}\u{2029} 😀");
        assert_eq!(canonical(&value), "\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001 \\u001f \u{7f} é \u{2028}\u{2029} 😀\"");
    }

    #[test]
    fn keys_are_sorted_by_utf16_code_units_with_array_indices_first() {
        // U+FF5E sorts after U+1F600 in UTF-16 (0xFF5E > 0xD83D) though before it in code points.
        let value = json!({"b": 1, "a": {"d": [3, {"z": 1, "y": 2}], "c": null}, "10": 0, "9": 0, "01": 0,
            "\u{ff5e}": 0, "\u{1f600}": 0, "4294967295": 0, "4294967294": 0});
        assert_eq!(
            canonical(&value),
            "{\"9\":0,\"10\":0,\"4294967294\":0,\"01\":0,\"4294967295\":0,\"a\":{\"c\":null,\"d\":[3,{\"y\":2,\"z\":1}]},\
             \"b\":1,\"\u{1f600}\":0,\"\u{ff5e}\":0}"
        );
    }

    #[test]
    fn the_checksum_is_sha256_of_the_canonical_text() {
        // sha256("{}")
        assert_eq!(checksum(&json!({})), "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    }
}
