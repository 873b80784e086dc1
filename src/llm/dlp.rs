//! Data-loss prevention: built-in detectors and custom regexes compiled once, run over request bodies. A match
//! is reported by detector name only: the matched text is never kept, logged or rewritten.
//!
//! Detectors read what the model reads: a JSON body is scanned with its escapes decoded (`AKIA\u0049…` is
//! `AKIAI…`, `\n` a line break), so no escape spelling hides a secret. A body without a backslash is scanned as
//! it is (it has nothing to decode), and so is a body that is not JSON.
//!
//! Each detector searches on its own, the fastest way for it: a regex with a required literal (`-----BEGIN `,
//! `AKIA`, `gh?_`, most custom patterns) skips through the body with a substring search, and card numbers and
//! SSNs share one pass over the body's digit runs. One `RegexSet` pass over a 100 KiB body measured 3× slower
//! than all of this together: a set search steps every byte through its automaton and cannot skip ahead on
//! literals. A custom regex without a literal costs one automaton pass of its own.

use std::ops::Range;
use std::sync::Arc;

use regex::bytes::{Regex, RegexBuilder};

use crate::config::file;

/// The built-in detectors, by the name used in `dlp.detectors`, audit records and metric labels.
pub const BUILTIN_DETECTORS: [&str; 5] = ["private_key", "aws_access_key", "github_token", "credit_card", "ssn"];

/// The most memory one custom regex may compile to.
const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The compiled `dlp` section.
#[derive(Debug, Default)]
pub struct Dlp {
    blocks: bool,
    /// In configuration order: built-ins as listed, then custom ones.
    detectors: Vec<Detector>,
    /// What the digit-run pass must look for.
    digit_runs: DigitFindings,
}

/// One detector: the name it is reported by and how it searches.
#[derive(Debug)]
struct Detector {
    name: Arc<str>,
    search: Search,
}

/// How a detector searches a body.
#[derive(Debug)]
enum Search {
    /// Any match of the regex is a hit.
    Regex(Regex),
    /// A Luhn-valid card number in a digit run.
    CreditCard,
    /// A possible SSN in a digit run.
    Ssn,
}

impl Dlp {
    /// Compiles the section; an error names the key path (`detectors[1]`, `custom[0].regex`) and the problem.
    pub fn compile(section: &file::Dlp) -> Result<Dlp, (String, String)> {
        let mut dlp = Dlp { blocks: section.action == file::DlpAction::Block, ..Dlp::default() };
        for (index, name) in section.detectors.iter().enumerate() {
            let Some(builtin) = Builtin::named(name) else {
                let choices = BUILTIN_DETECTORS.join(", ");
                return Err((
                    format!("detectors[{index}]"),
                    format!("unknown detector {name:?}: choose from {choices}"),
                ));
            };
            // Listing a detector twice changes nothing.
            if dlp.detector_names().any(|listed| listed == name) {
                continue;
            }
            let search = builtin.search().map_err(|message| (format!("detectors[{index}]"), message))?;
            match search {
                Search::CreditCard => dlp.digit_runs.card = true,
                Search::Ssn => dlp.digit_runs.ssn = true,
                Search::Regex(_) => {}
            }
            dlp.detectors.push(Detector { name: Arc::from(name.as_str()), search });
        }
        for (index, custom) in section.custom.iter().enumerate() {
            check_custom_name(section, index, &custom.name)?;
            let regex =
                compile_custom_regex(&custom.regex).map_err(|message| (format!("custom[{index}].regex"), message))?;
            dlp.detectors.push(Detector { name: Arc::from(custom.name.as_str()), search: Search::Regex(regex) });
        }
        Ok(dlp)
    }

    /// `action: block`.
    pub fn blocks(&self) -> bool {
        self.blocks
    }

    /// The names of the detectors that match `body`, each once, in configuration order. A JSON body is read
    /// with its escapes decoded.
    pub fn scan(&self, body: &[u8]) -> Vec<Arc<str>> {
        if self.detectors.is_empty() {
            return Vec::new();
        }
        let decoded = if memchr::memchr(b'\\', body).is_some() { decode_json_escapes(body) } else { None };
        self.scan_text(decoded.as_deref().unwrap_or(body))
    }

    /// The names of the detectors that match `body` as it is.
    fn scan_text(&self, body: &[u8]) -> Vec<Arc<str>> {
        let in_digit_runs =
            if self.digit_runs.any() { find_in_digit_runs(body, self.digit_runs) } else { DigitFindings::default() };
        self.detectors
            .iter()
            .filter(|detector| match &detector.search {
                Search::Regex(regex) => regex.is_match(body),
                Search::CreditCard => in_digit_runs.card,
                Search::Ssn => in_digit_runs.ssn,
            })
            .map(|detector| detector.name.clone())
            .collect()
    }

    /// The detector names, in the order `scan` reports them.
    pub fn detector_names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|detector| &*detector.name)
    }
}

fn check_custom_name(section: &file::Dlp, index: usize, name: &str) -> Result<(), (String, String)> {
    let key = || format!("custom[{index}].name");
    if name.is_empty() {
        return Err((key(), "must not be empty".to_owned()));
    }
    if BUILTIN_DETECTORS.contains(&name) {
        return Err((key(), format!("{name:?} is the name of a built-in detector; list it under detectors")));
    }
    if let Some(earlier) = section.custom.iter().take(index).position(|custom| custom.name == name) {
        return Err((key(), format!("{name:?} is already the name of custom[{earlier}]")));
    }
    Ok(())
}

fn compile_custom_regex(pattern: &str) -> Result<Regex, String> {
    let regex = RegexBuilder::new(pattern)
        .size_limit(CUSTOM_REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| format!("invalid regex: {error}"))?;
    // A regex that matches nothing at all would match every body.
    if regex.is_match(b"") {
        return Err("matches the empty string, so it would match every request".to_owned());
    }
    Ok(regex)
}

// ---------------------------------------------------------------------------------------------------------------
// The decoded view of a JSON body: each escape replaced by what it means, every other byte kept, so the text
// between strings (keys, numbers, punctuation) reads as before. An escape is never shorter than what it decodes
// to (`\n` → 1 byte, `\u00e9` → 2, `\ud83d\ude00` → 4), so the view is never longer than the body.
//
// A backslash is only valid inside a JSON string, so decoding the escapes in order, without finding where each
// string starts and ends, reads a valid body exactly as a JSON parser does. A decoder that also found the strings,
// stopping at every quote, took 3× as long on the Claude Code bench body.

/// What a lone surrogate escape (`\ud800` not followed by an escaped low surrogate, or a low one alone) decodes
/// to: U+FFFD, the replacement character. A parser that accepts a lone surrogate (Python's, JavaScript's) cannot
/// pass it on as UTF-8 text, which has no encoding for it, and whatever stands in for it is not part of a secret.
const LONE_SURROGATE: char = char::REPLACEMENT_CHARACTER;

/// `body` with every JSON escape decoded, or `None` when `body` does not start like JSON that can hold a string
/// (`{`, `[` or `"`, after whitespace and a UTF-8 byte order mark): such a body is scanned as it came. An escape
/// JSON does not define (`\x`, `\u` without four hex digits) is kept as written: a JSON parser refuses that body,
/// and one bad escape must not switch off the decoding of the others.
fn decode_json_escapes(body: &[u8]) -> Option<Vec<u8>> {
    let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = text.iter().position(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))?;
    if !matches!(text.get(start), Some(b'{' | b'[' | b'"')) {
        return None;
    }
    // Backslashes are found 16 bytes at a time: a Claude Code request holds one every 18 bytes or so, and
    // `memchr_iter`, a call per backslash, took 1.5× as long on the Claude Code bench body.
    let mut decoder = Decoder { view: vec![0; body.len()], read: 0, written: 0 };
    let mut words = body.chunks_exact(16);
    let mut offset = 0;
    for word in &mut words {
        let mut backslashes = byte_flags(u128::from_le_bytes(word.try_into().unwrap_or_default()), b'\\');
        while backslashes != 0 {
            decoder.escape_at(body, offset + (backslashes.trailing_zeros() / 8) as usize)?;
            backslashes &= backslashes - 1;
        }
        offset += 16;
    }
    for (index, byte) in words.remainder().iter().enumerate() {
        if *byte == b'\\' {
            decoder.escape_at(body, offset + index)?;
        }
    }
    decoder.copy_to(body, body.len())?;
    let mut view = decoder.view;
    view.truncate(decoder.written);
    Some(view)
}

/// A decoded view being built: `view[..written]` is `body[..read]` decoded. `written <= read` always (no escape
/// is shorter than what it decodes to), and `view` is as long as the body, so every write fits: the methods
/// return `None` only if that broke, and the body is then scanned as it came.
struct Decoder {
    view: Vec<u8>,
    read: usize,
    written: usize,
}

impl Decoder {
    /// Copies the bytes before the backslash at `backslash` and decodes the escape it starts.
    #[inline(always)] // Once per escape: a call would cost as much as the work.
    fn escape_at(&mut self, body: &[u8], backslash: usize) -> Option<()> {
        // The second backslash of `\\` was read with the first.
        if backslash < self.read {
            return Some(());
        }
        self.copy_to(body, backslash)?;
        let letter = body.get(backslash + 1).copied().unwrap_or_default();
        // A table, not a `match` on the letter: that compiles to a jump the processor mispredicts at most escapes.
        match ONE_LETTER_ESCAPES[usize::from(letter)] {
            0 => self.other_escape_at(body, backslash),
            decoded => {
                *self.view.get_mut(self.written)? = decoded;
                self.read += 2;
                self.written += 1;
                Some(())
            }
        }
    }

    /// Decodes a `\uXXXX` escape (or a surrogate pair) at `backslash`; a backslash that starts no escape JSON
    /// defines is kept, and what follows it is read as any other byte.
    #[inline(never)] // Rare in a request: kept out of the loop over the common escapes.
    fn other_escape_at(&mut self, body: &[u8], backslash: usize) -> Option<()> {
        let (decoded, length) = decode_unicode_escape(body.get(backslash..)?).unwrap_or(('\\', 1));
        let bytes = decoded.len_utf8();
        decoded.encode_utf8(self.view.get_mut(self.written..self.written + bytes)?);
        self.read += length;
        self.written += bytes;
        Some(())
    }

    /// Copies `body[read..end]` to the view. A gap of up to 32 bytes, the common one, is copied as 32 bytes at
    /// once: the bytes past it land where the decoding goes on, and are written over.
    #[inline(always)] // Once per escape, as `escape_at`.
    fn copy_to(&mut self, body: &[u8], end: usize) -> Option<()> {
        let gap = end.checked_sub(self.read)?;
        let (from, to) = (self.read, self.written);
        match (body.get(from..from + 32), self.view.get_mut(to..to + 32)) {
            (Some(source), Some(target)) if gap <= 32 => target.copy_from_slice(source),
            _ => self.view.get_mut(to..to + gap)?.copy_from_slice(body.get(from..end)?),
        }
        self.read = end;
        self.written += gap;
        Some(())
    }
}

/// The top bit of each byte of `word` that is `wanted`; all other bits 0. Exact for every byte: the sum is taken
/// on the low seven bits of each byte, so no carry reaches the next one.
fn byte_flags(word: u128, wanted: u8) -> u128 {
    const LOW_SEVEN: u128 = u128::MAX / 0xFF * 0x7F;
    let differences = word ^ (u128::MAX / 0xFF * u128::from(wanted));
    !(((differences & LOW_SEVEN) + LOW_SEVEN) | differences) & !LOW_SEVEN
}

/// What each one-letter escape stands for, by its letter (`n`: a line feed); 0 for every other byte.
const ONE_LETTER_ESCAPES: [u8; 256] = {
    let mut table = [0; 256];
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'/' as usize] = b'/';
    table[b'b' as usize] = 0x08;
    table[b'f' as usize] = 0x0C;
    table[b'n' as usize] = b'\n';
    table[b'r' as usize] = b'\r';
    table[b't' as usize] = b'\t';
    table
};

/// The character a `\uXXXX` escape at the start of `escape` stands for, and the escape's length: 6, or 12 for a
/// surrogate pair (`\ud83d\ude00`, one character). `None` when four hex digits do not follow the `\u`.
fn decode_unicode_escape(escape: &[u8]) -> Option<(char, usize)> {
    let unit = hex_unit(escape.get(2..6)?)?;
    if let Some(decoded) = char::from_u32(unit) {
        return Some((decoded, 6));
    }
    let low = match escape.get(6..8) {
        Some(b"\\u") => escape.get(8..12).and_then(hex_unit),
        _ => None,
    };
    match low {
        // A high surrogate and a low one: the formula lands in U+10000..=U+10FFFF, always a character.
        Some(low @ 0xDC00..=0xDFFF) if unit <= 0xDBFF => {
            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)).map(|decoded| (decoded, 12))
        }
        // The escape after a lone surrogate is decoded on its own, next.
        _ => Some((LONE_SURROGATE, 6)),
    }
}

/// Four hex digits, either case.
fn hex_unit(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |unit, digit| Some(unit << 4 | char::from(*digit).to_digit(16)?))
}

// ---------------------------------------------------------------------------------------------------------------
// Built-in detectors. Code the model reads holds escapes of its own (`"keys:\nAKIA…"` in a source file): a secret
// may sit right after one such as `\n`.

/// The built-in detectors.
#[derive(Debug, Clone, Copy)]
enum Builtin {
    PrivateKey,
    AwsAccessKey,
    GithubToken,
    CreditCard,
    Ssn,
}

impl Builtin {
    fn named(name: &str) -> Option<Builtin> {
        match name {
            "private_key" => Some(Builtin::PrivateKey),
            "aws_access_key" => Some(Builtin::AwsAccessKey),
            "github_token" => Some(Builtin::GithubToken),
            "credit_card" => Some(Builtin::CreditCard),
            "ssn" => Some(Builtin::Ssn),
            _ => None,
        }
    }

    fn search(self) -> Result<Search, String> {
        let pattern = match self {
            // RSA, EC, DSA, OPENSSH, ENCRYPTED, plain PKCS#8 and `PGP PRIVATE KEY BLOCK` headers.
            Builtin::PrivateKey => r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
            // A word boundary before, or a JSON escape (`\n`, `\t`, `\r`) whose letter touches the key.
            Builtin::AwsAccessKey => r"(?:^|[^A-Za-z0-9_]|\\[nrt])(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
            // Classic tokens (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained ones; longer tokens match too.
            Builtin::GithubToken => r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}",
            Builtin::CreditCard => return Ok(Search::CreditCard),
            Builtin::Ssn => return Ok(Search::Ssn),
        };
        // The patterns above compile (the tests compile each); an error would be reported, not panic.
        Regex::new(pattern).map(Search::Regex).map_err(|error| error.to_string())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Card numbers and SSNs: one pass over the digit runs of the body. A run is digit groups joined by single spaces
// or dashes (`4111 1111 1111 1111`, `123-45-6789`, `2024-01-15`); a group is a maximal sequence of digits.

/// What the digit-run pass looks for, or found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DigitFindings {
    card: bool,
    ssn: bool,
}

impl DigitFindings {
    fn any(self) -> bool {
        self.card || self.ssn
    }

    /// Whether everything `wanted` has been found.
    fn covers(self, wanted: DigitFindings) -> bool {
        (self.card || !wanted.card) && (self.ssn || !wanted.ssn)
    }
}

/// Group layouts of printed card numbers (4-4-4-4 and 4-4-4-4-3 for most, 4-6-5 Amex, 4-6-4 Diners).
const CARD_LAYOUTS: [&[usize]; 4] = [&[4, 4, 4, 4], &[4, 4, 4, 4, 3], &[4, 6, 5], &[4, 6, 4]];

/// The most groups any check looks back at: the longest layout.
const RECENT_GROUPS: usize = 5;

/// A digit group and the separator before it (`None` for the first of a run).
#[derive(Debug, Default, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    separator: Option<u8>,
}

impl Group {
    fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
}

fn find_in_digit_runs(body: &[u8], wanted: DigitFindings) -> DigitFindings {
    let mut found = DigitFindings::default();
    let mut position = 0;
    while !found.covers(wanted) {
        let Some(start) = next_digit(body, position) else { break };
        position = read_run(body, start, wanted, &mut found);
    }
    found
}

/// The index of the first ASCII digit at or after `from`, 8 bytes at a time.
fn next_digit(body: &[u8], from: usize) -> Option<usize> {
    let rest = body.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut offset = from;
    for word in &mut words {
        let digits = digit_flags(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        if digits != 0 {
            return Some(offset + (digits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words.remainder().iter().position(u8::is_ascii_digit).map(|index| offset + index)
}

/// The top bit of each byte of `word` that is an ASCII digit; all other bits 0. Exact for every byte: the sums
/// are taken on the low seven bits of each byte, so no carry reaches the next one.
fn digit_flags(word: u64) -> u64 {
    const LOW_SEVEN: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let low = word & LOW_SEVEN;
    let from_zero = low + 0x5050_5050_5050_5050; // top bit set from b'0' (0x30) up
    let past_nine = low + 0x4646_4646_4646_4646; // top bit set from b':' (0x3A) up
    from_zero & !past_nine & !word & !LOW_SEVEN
}

/// Reads the run starting at `start` (a digit), checking each window that ends at each group; returns the end.
fn read_run(body: &[u8], start: usize, wanted: DigitFindings, found: &mut DigitFindings) -> usize {
    let mut end = start;
    while body.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    // Most runs are one short number, not joined to another: no card or SSN can end in them.
    let joined = matches!((body.get(end), body.get(end + 1)), (Some(b' ' | b'-'), Some(next)) if next.is_ascii_digit());
    if !joined && end - start < 13 {
        return end;
    }
    read_groups(body, start, wanted, found)
}

/// Reads the run starting at `start` group by group, checking each window that ends at each group.
fn read_groups(body: &[u8], start: usize, wanted: DigitFindings, found: &mut DigitFindings) -> usize {
    // The last groups of the run, oldest first; only the last `count.min(RECENT_GROUPS)` are filled.
    let mut recent = [Group::default(); RECENT_GROUPS];
    let mut count = 0usize;
    let mut digits = 0usize;
    let mut separator = None;
    let mut position = start;
    loop {
        let group_start = position;
        while body.get(position).is_some_and(u8::is_ascii_digit) {
            position += 1;
        }
        let group = Group { start: group_start, end: position, separator };
        recent.rotate_left(1);
        if let Some(last) = recent.last_mut() {
            *last = group;
        }
        count += 1;
        digits += group.len();
        // A card layout or an SSN ends at a third group or later; a card alone in one group has 13 digits or more.
        if count >= 3 || group.len() >= 13 {
            let filled = recent.get(RECENT_GROUPS.saturating_sub(count)..).unwrap_or_default();
            if wanted.card && !found.card && card_ends_here(body, filled) {
                found.card = true;
            }
            if wanted.ssn && !found.ssn && ssn_ends_here(body, filled) {
                found.ssn = true;
            }
        }
        match (body.get(position), body.get(position + 1)) {
            (Some(&joint @ (b' ' | b'-')), Some(next)) if next.is_ascii_digit() => {
                separator = Some(joint);
                position += 1;
            }
            _ => break,
        }
    }
    if wanted.card && !found.card && (13..=19).contains(&digits) && is_card(body, start..position) {
        found.card = true;
    }
    position
}

/// Whether a card number ends with the last of these groups: the last group alone, or the last groups in a
/// printed card layout.
fn card_ends_here(body: &[u8], groups: &[Group]) -> bool {
    let Some(last) = groups.last() else { return false };
    let single = (13..=19).contains(&last.len()) && is_card(body, last.start..last.end);
    single
        || CARD_LAYOUTS.iter().any(|layout| {
            let Some(window) = groups.len().checked_sub(layout.len()).and_then(|from| groups.get(from..)) else {
                return false;
            };
            let (Some(first), Some(last)) = (window.first(), window.last()) else { return false };
            window.iter().map(Group::len).eq(layout.iter().copied()) && is_card(body, first.start..last.end)
        })
}

/// Whether `body[range]` (digits, maybe with separators) is a card number: 13 to 19 digits that start and are as
/// long as a card network issues them, pass the Luhn check and are not all one digit (`0000 0000 0000 0000` is a
/// placeholder), not glued to letters or digits (a hex string or an identifier holds digit runs that are not card
/// numbers).
fn is_card(body: &[u8], range: Range<usize>) -> bool {
    let Some(text) = body.get(range.clone()) else { return false };
    let mut digits = [0u8; 19];
    let mut count = 0;
    for digit in text.iter().filter(|byte| byte.is_ascii_digit()) {
        let Some(slot) = digits.get_mut(count) else { return false };
        *slot = digit - b'0';
        count += 1;
    }
    let digits = digits.get(..count).unwrap_or_default();
    count >= 13
        && issued_like_a_card(digits)
        && digits.iter().any(|digit| Some(digit) != digits.first())
        && passes_luhn(digits)
        && !alphanumeric_before(body, range.start)
        && !body.get(range.end).is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether `digits` start as the major card networks issue them, at a length they issue (ISO/IEC 7812 issuer
/// ranges): Visa 4 (13, 16 or 19 digits); Mastercard 51–55 and 2221–2720 (16); Maestro 50 and 56–69, Discover
/// and UnionPay 6 (13–19); Amex 34 and 37 (15); Diners 30, 36, 38, 39 (14–19); JCB 35 (16–19). A Luhn check alone
/// passes one number in ten: epoch timestamps in milliseconds (13 digits) and microseconds (16), which start with
/// 1, are the common case this keeps out.
fn issued_like_a_card(digits: &[u8]) -> bool {
    let prefix = |length: usize| digits.iter().take(length).fold(0u32, |value, &digit| value * 10 + u32::from(digit));
    let length = digits.len();
    match digits.first() {
        Some(4) => matches!(length, 13 | 16 | 19),
        Some(5) | Some(6) => (13..=19).contains(&length),
        Some(2) => length == 16 && (2221..=2720).contains(&prefix(4)),
        Some(3) => match prefix(2) {
            34 | 37 => length == 15,
            30 | 36 | 38 | 39 => (14..=19).contains(&length),
            35 => (16..=19).contains(&length),
            _ => false,
        },
        _ => false,
    }
}

/// The Luhn checksum: from the right, double every second digit (minus 9 above 9); the sum ends in 0.
fn passes_luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| {
            let digit = u32::from(digit);
            match position % 2 {
                0 => digit,
                _ if digit * 2 > 9 => digit * 2 - 9,
                _ => digit * 2,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether the byte before `start` is a letter or digit, not counting the letter of a JSON escape (`\n4111…`).
fn alphanumeric_before(body: &[u8], start: usize) -> bool {
    let Some(before) = start.checked_sub(1).and_then(|index| body.get(index)) else { return false };
    if !before.is_ascii_alphanumeric() {
        return false;
    }
    let escaped = start.checked_sub(2).and_then(|index| body.get(index)) == Some(&b'\\');
    !(escaped && matches!(before, b'n' | b't' | b'r'))
}

/// Whether the last three groups are `NNN-NN-NNNN` with a possible area (not 000, 666 or 900–999), group (not
/// 00) and serial (not 0000). Groups are maximal, so the number does not touch other digits.
fn ssn_ends_here(body: &[u8], groups: &[Group]) -> bool {
    let Some([area, group, serial]) = groups.len().checked_sub(3).and_then(|from| groups.get(from..)) else {
        return false;
    };
    let digits = |part: &Group| body.get(part.start..part.end).unwrap_or_default();
    let (area_digits, group_digits, serial_digits) = (digits(area), digits(group), digits(serial));
    area.len() == 3
        && group.len() == 2
        && serial.len() == 4
        && group.separator == Some(b'-')
        && serial.separator == Some(b'-')
        && area_digits != b"000"
        && area_digits != b"666"
        && area_digits.first() != Some(&b'9')
        && group_digits != b"00"
        && serial_digits != b"0000"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Custom detectors as (name, regex).
    type Customs<'a> = &'a [(&'a str, &'a str)];

    fn section(detectors: &[&str], custom: &[(&str, &str)]) -> file::Dlp {
        file::Dlp {
            action: file::DlpAction::Block,
            detectors: detectors.iter().map(|name| name.to_string()).collect(),
            custom: custom
                .iter()
                .map(|(name, regex)| file::CustomDetector { name: name.to_string(), regex: regex.to_string() })
                .collect(),
        }
    }

    fn all_builtins() -> Dlp {
        Dlp::compile(&section(&BUILTIN_DETECTORS, &[])).expect("the built-in detectors compile")
    }

    /// A Messages API body with `text` as the user's message, JSON-escaped.
    fn body(text: &str) -> Vec<u8> {
        let request = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "stream": true,
            "system": [{"type": "text", "text": "You are a coding assistant."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        });
        serde_json::to_vec(&request).expect("serializes")
    }

    fn scan(dlp: &Dlp, text: &str) -> Vec<String> {
        dlp.scan(&body(text)).iter().map(|name| name.to_string()).collect()
    }

    const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgwMbRvI0MBZhpF\n-----END RSA PRIVATE KEY-----\n";

    #[test]
    fn each_detector_finds_a_realistic_sample_in_a_request_body() {
        let dlp = all_builtins();
        let cases = [
            (format!("Why does this fail to load?\n{PEM}"), "private_key"),
            ("[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n".to_owned(), "aws_access_key"),
            ("export GITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a\n".to_owned(), "github_token"),
            ("token: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz".to_owned(), "github_token"),
            ("charge card 4111 1111 1111 1111 exp 12/29".to_owned(), "credit_card"),
            ("stripe test card 4242-4242-4242-4242".to_owned(), "credit_card"),
            ("amex 378282246310005.".to_owned(), "credit_card"),
            ("amex 3782-822463-10005".to_owned(), "credit_card"),
            ("paid 2024-01-15 4111 1111 1111 1111 ok".to_owned(), "credit_card"),
            ("ref FALCON-1234 4111111111111111".to_owned(), "credit_card"),
            ("customer ssn: 123-45-6789, thanks".to_owned(), "ssn"),
        ];
        for (text, detector) in cases {
            assert_eq!(scan(&dlp, &text), [detector], "{text:?}");
        }
    }

    #[test]
    fn private_key_header_forms() {
        let dlp = Dlp::compile(&section(&["private_key"], &[])).expect("compiles");
        for kind in ["", "RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", "PGP "] {
            let block = if kind == "PGP " { " BLOCK" } else { "" };
            let text = format!("-----BEGIN {kind}PRIVATE KEY{block}-----\nabc\n");
            assert_eq!(scan(&dlp, &text), ["private_key"], "{text:?}");
        }
        assert!(scan(&dlp, "-----BEGIN PUBLIC KEY-----\nabc").is_empty());
        assert!(scan(&dlp, "-----BEGIN CERTIFICATE-----\nabc").is_empty());
    }

    #[test]
    fn secrets_right_after_a_json_escape_are_found() {
        let dlp = all_builtins();
        assert_eq!(scan(&dlp, "keys:\nAKIAIOSFODNN7EXAMPLE"), ["aws_access_key"]);
        assert_eq!(scan(&dlp, "cards:\n4111111111111111"), ["credit_card"]);
        assert_eq!(scan(&dlp, "ssns:\t123-45-6789"), ["ssn"]);
    }

    /// A Messages API body whose user message is `escaped`, written into the JSON string as it is: the caller
    /// spells the escapes.
    fn escaped_body(escaped: &str) -> Vec<u8> {
        format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{{"role":"user","content":[{{"type":"text","text":"{escaped}"}}]}}]}}"#
        )
        .into_bytes()
    }

    fn scan_escaped(dlp: &Dlp, escaped: &str) -> Vec<String> {
        let body = escaped_body(escaped);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "valid JSON: {escaped}");
        dlp.scan(&body).iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn no_json_escape_spelling_hides_a_secret() {
        let dlp = Dlp::compile(&section(
            &BUILTIN_DETECTORS,
            &[("project-falcon", "FALCON-[0-9]{4}"), ("vault-url", r"https://vault\.corp/v1/"), ("emoji", "😀")],
        ))
        .expect("compiles");
        let cases = [
            // Dashes, letters and the space of a PEM header; a whole key with `\n` line breaks and `\/` in base64.
            (r"\u002d\u002d\u002d\u002d\u002dBEGIN RSA PRIVATE KEY-----", "private_key"),
            (r"-----\u0042EGIN\u0020PRIVATE\u0020KEY-----\nMIIE", "private_key"),
            (
                r"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r\/ZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n",
                "private_key",
            ),
            (r"AKIA\u0049OSFODNN7EXAMPLE", "aws_access_key"),
            (r"\u0041\u004b\u0049\u0041IOSFODNN7EXAMPLE", "aws_access_key"),
            (r"keys:\u000aAKIAIOSFODNN7EXAMPL\u0045", "aws_access_key"),
            // A backspace or form feed escape is a boundary as `\n` is: `bAKIA…` as written, `\u{8}AKIA…` read.
            (r"\bAKIAIOSFODNN7EXAMPLE", "aws_access_key"),
            (r"\fASIAIOSFODNN7EXAMPLE", "aws_access_key"),
            (r"ghp\u005f16C7e42F292c6912E7710c838347Ae178B4a", "github_token"),
            (r"\u0067hp_16C7e42F292c6912E7710c838347Ae178B4\u0061", "github_token"),
            (r"github\u005Fpat\u005F11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_token"),
            (r"card \u0034111111111111111", "credit_card"),
            (r"card 4111\u00201111\u00201111\u00201111", "credit_card"),
            (r"card 4111\u002d1111\u002D1111-1111", "credit_card"),
            (
                r"amex \u0033\u0037\u0038\u0032\u0038\u0032\u0032\u0034\u0036\u0033\u0031\u0030\u0030\u0030\u0035",
                "credit_card",
            ),
            (r"ssn 123\u002d45\u002d6789", "ssn"),
            (r"ssn \u0031\u00323-45-678\u0039.", "ssn"),
            (r"ref FALCON\u002d2024", "project-falcon"),
            (r"\u0046ALCON-1234", "project-falcon"),
            (r"see https:\/\/vault.corp\/v1\/secret", "vault-url"),
            // A surrogate pair is one character.
            (r"\ud83d\ude00", "emoji"),
            (r"\uD83D\uDE00", "emoji"),
        ];
        for (escaped, detector) in cases {
            assert_eq!(scan_escaped(&dlp, escaped), [detector], "{escaped}");
        }
        let all_escaped: String =
            "AKIAIOSFODNN7EXAMPLE".chars().map(|letter| format!("\\u{:04x}", u32::from(letter))).collect();
        assert_eq!(scan_escaped(&dlp, &all_escaped), ["aws_access_key"]);
    }

    #[test]
    fn decoding_adds_no_false_positives() {
        let dlp =
            Dlp::compile(&section(&BUILTIN_DETECTORS, &[("project-falcon", "FALCON-[0-9]{4}")])).expect("compiles");
        let clean = [
            // Escaped text that is no secret.
            r"Line one\nLine two\t\u0022quoted\u0022 \\n \/path\/to\/file \u00e9t\u00e9 \ud83d\ude00",
            r"\u0034111 1111 1111 1112",                              // not Luhn-valid
            r"sha 4111111111111111\u0061bcdef",                       // digits glued to a decoded letter
            r"id \u0034\u00311111111111111110000000",                 // too many digits
            r"\u0041KIAIOSFODNN7EXAMPL",                              // AKIA + 15
            r"x\u0041KIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLE\u0058", // glued to decoded letters
            r"ghp\u005f16C7e42F292c6912E7710c838347Ae178B4",          // 35 characters
            r"\u002d\u002d\u002d\u002d\u002dBEGIN PUBLIC KEY-----",
            r"000\u002d12-3456 123-45-\u0030000",
            r"FALCON\u002d20",
        ];
        for escaped in clean {
            assert!(scan_escaped(&dlp, escaped).is_empty(), "{escaped}: {:?}", scan_escaped(&dlp, escaped));
        }
        // A lone surrogate (serde_json refuses it, more lenient parsers take it) stands for U+FFFD: it joins nothing.
        let lone = escaped_body(r"AKIA\ud800IOSFODNN7EXAMPLE 4111\udc001111 1111 1111");
        assert!(dlp.scan(&lone).is_empty());
    }

    #[test]
    fn every_escape_decodes_as_json_defines() {
        let decoded = |body: &[u8]| decode_json_escapes(body).map(|view| String::from_utf8_lossy(&view).into_owned());
        let body = br#"{"t\u0065xt":"\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC\ud83d\ude00","n":4111}"#;
        let expected = "{\"text\":\"\"\\/\u{8}\u{c}\n\r\tAé€😀\",\"n\":4111}";
        assert_eq!(decoded(body).as_deref(), Some(expected));
        let value: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
        assert_eq!(value["text"], "\"\\/\u{8}\u{c}\n\r\tAé€😀");
        // Lone surrogates become U+FFFD; the escape after one is decoded on its own.
        assert_eq!(
            decoded(br#"["\ud800A\udc00B\ud800\u0041\ud800\ud83d\ude00"]"#).as_deref(),
            Some("[\"\u{fffd}A\u{fffd}B\u{fffd}A\u{fffd}😀\"]")
        );
        // An escape JSON does not define is kept as written, and the rest is still decoded.
        assert_eq!(
            decoded(br#"{"a":"\x41 \u12 \u004 \uZZZZ \u0041 \"#).as_deref(),
            Some(r#"{"a":"\x41 \u12 \u004 \uZZZZ A \"#)
        );
        assert_eq!(decoded(br#"{"a":"\ud83d\u"}"#).as_deref(), Some("{\"a\":\"\u{fffd}\\u\"}"));
        // A body that does not start like JSON is not decoded; whitespace and a byte order mark may come first.
        assert_eq!(decoded(br"plain text \u0041KIA"), None);
        assert_eq!(decoded(br"4111\u0031"), None);
        assert_eq!(decoded(b""), None);
        assert_eq!(decoded(b" \r\n\t"), None);
        assert_eq!(decoded(b"\xEF\xBB\xBF \n[\"\\u0041\"]").as_deref(), Some("\u{feff} \n[\"A\"]"));
        assert_eq!(decoded(br#""\u0041""#).as_deref(), Some("\"A\""));
    }

    #[test]
    fn a_body_that_is_not_json_is_scanned_as_it_came() {
        let dlp = all_builtins();
        let scan_raw = |body: &[u8]| dlp.scan(body).iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert_eq!(scan_raw(b"card=4111111111111111&note=a\\u0041"), ["credit_card"]);
        assert_eq!(scan_raw(b"keys:\\nAKIAIOSFODNN7EXAMPLE"), ["aws_access_key"]);
        assert!(scan_raw(b"key=\\u0041KIAIOSFODNN7EXAMPLE").is_empty());
    }

    /// Writes `text` as the inside of a JSON string, each character in a spelling picked at random: as it is
    /// (where JSON allows), as its short escape, or as `\uXXXX` (a surrogate pair above U+FFFF), either hex case.
    fn escape_randomly(text: &str, random: &mut impl rand::Rng) -> String {
        let mut escaped = String::new();
        for character in text.chars() {
            let short = match character {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let plain_allowed = !matches!(character, '"' | '\\') && u32::from(character) >= 0x20;
            match (random.gen_range(0..3), short) {
                (0, _) if plain_allowed => escaped.push(character),
                (1, Some(short)) => escaped.push_str(short),
                _ => {
                    for unit in character.encode_utf16(&mut [0; 2]) {
                        let hex = format!("{unit:04x}");
                        escaped.push_str("\\u");
                        escaped.push_str(&if random.gen_bool(0.5) { hex.to_uppercase() } else { hex });
                    }
                }
            }
        }
        escaped
    }

    #[test]
    fn the_decoded_view_agrees_with_serde_json() {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(13);
        let alphabet: Vec<char> =
            "aZ09 -_/\\\"\n\r\t\u{0}\u{8}\u{c}\u{1f}\u{7f}é€😀\u{10ffff}\u{fffd}{}[]:,".chars().collect();
        for _ in 0..5_000 {
            let texts: [String; 3] = std::array::from_fn(|_| {
                (0..random.gen_range(0..24)).map(|_| alphabet[random.gen_range(0..alphabet.len())]).collect()
            });
            let [key, first, second] = texts.each_ref().map(|text| escape_randomly(text, &mut random));
            let body = format!("{{\"{key}\":[\"{first}\", 4111, \"{second}\"]}}");
            let value: serde_json::Value = serde_json::from_str(&body).expect("the escaped body is valid JSON");
            assert_eq!(value[&texts[0]], serde_json::json!([texts[1], 4111, texts[2]]), "{body}");
            let expected = format!("{{\"{}\":[\"{}\", 4111, \"{}\"]}}", texts[0], texts[1], texts[2]);
            let view = decode_json_escapes(body.as_bytes()).expect("a JSON body is decoded");
            assert_eq!(String::from_utf8(view).expect("UTF-8"), expected, "{body}");
            assert!(expected.len() <= body.len());
        }
    }

    #[test]
    fn near_misses_pass() {
        let dlp = all_builtins();
        let near_misses = [
            "order 4111 1111 1111 1112",                                    // 16 digits, not Luhn-valid
            "sha 4111111111111111abcdef",                                   // digits glued to letters
            "id 41111111111111110000000",                                   // too many digits
            "phone 4111-1111-1111",                                         // 12 digits
            "0000 0000 0000 0000 and 4444444444444",                        // Luhn-valid placeholders of one digit
            "dates 2024-01-15 2024-01-16 2024-01-17 2024-01-18 1999-12-31", // no card layout inside
            "000-12-3456 666-12-3456 912-34-5678 123-00-4567 123-45-0000",
            "1123-45-6789 123-45-67890", // digits around
            "AKIAIOSFODNN7EXAMPL",       // AKIA + 15
            "xAKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLEX",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4", // 35 characters
            "github_pat_short",
            "-----BEGIN PUBLIC KEY-----",
        ];
        for text in near_misses {
            assert!(scan(&dlp, text).is_empty(), "{text:?}: {:?}", scan(&dlp, text));
        }
    }

    #[test]
    fn a_rejected_candidate_does_not_hide_a_later_one() {
        let dlp = all_builtins();
        assert_eq!(scan(&dlp, "000-12-3456 and 123-45-6789"), ["ssn"]);
        assert_eq!(scan(&dlp, "4111 1111 1111 1112 / 4111 1111 1111 1111"), ["credit_card"]);
    }

    /// The digit-run rules restated naively: every substring is a candidate.
    fn naive_digit_findings(body: &[u8]) -> DigitFindings {
        let digit = |index: usize| body.get(index).is_some_and(u8::is_ascii_digit);
        let joint = |index: usize| {
            matches!(body.get(index), Some(b' ' | b'-')) && digit(index + 1) && index > 0 && digit(index - 1)
        };
        let mut found = DigitFindings::default();
        for start in 0..body.len() {
            for end in start + 1..=body.len() {
                let text = &body[start..end];
                let well_formed = digit(start)
                    && digit(end - 1)
                    && (start == 0 || !digit(start - 1))
                    && !digit(end)
                    && (start..end).all(|index| digit(index) || joint(index));
                if !well_formed {
                    continue;
                }
                let groups: Vec<usize> = text.split(|byte| !byte.is_ascii_digit()).map(<[u8]>::len).collect();
                let joined_before = start >= 2 && joint(start - 1);
                let whole_run = !(joined_before || joint(end));
                let shaped = whole_run || groups.len() == 1 || CARD_LAYOUTS.iter().any(|layout| groups == *layout);
                let digits: Vec<u8> =
                    text.iter().filter(|byte| byte.is_ascii_digit()).map(|byte| byte - b'0').collect();
                found.card |= shaped
                    && (13..=19).contains(&digits.len())
                    && issued_like_a_card(&digits)
                    && digits.iter().any(|digit| *digit != digits[0])
                    && passes_luhn(&digits)
                    && !alphanumeric_before(body, start)
                    && !body.get(end).is_some_and(u8::is_ascii_alphanumeric);
                let ssn = text.len() == 11
                    && text.iter().enumerate().all(|(index, byte)| match index {
                        3 | 6 => *byte == b'-',
                        _ => byte.is_ascii_digit(),
                    })
                    && !matches!(&text[0..3], b"000" | b"666")
                    && text[0] != b'9'
                    && &text[4..6] != b"00"
                    && &text[7..11] != b"0000";
                found.ssn |= ssn;
            }
        }
        found
    }

    #[test]
    fn timestamps_and_numbers_no_network_issues_are_not_cards() {
        let dlp = Dlp::compile(&section(&["credit_card"], &[])).expect("compiles");
        // Epoch milliseconds and microseconds around now, each Luhn-valid one among them: none is a card.
        let mut luhn_valid = 0;
        for offset in 0..200u64 {
            for number in [1_764_316_800_000 + offset, 1_764_316_800_000_000 + offset] {
                let text = number.to_string();
                let digits: Vec<u8> = text.bytes().map(|byte| byte - b'0').collect();
                if passes_luhn(&digits) {
                    luhn_valid += 1;
                    assert!(scan(&dlp, &format!("{{\"ts\":{text}}}")).is_empty(), "{text} is a timestamp");
                }
            }
        }
        assert!(luhn_valid >= 20, "the timestamps tried include Luhn-valid ones: {luhn_valid}");
        // Luhn-valid, but no network issues these (a 9 prefix, a Visa of 15 digits, Amex of 16).
        for number in ["9111111111111110", "411111111111116", "3782822463100052"] {
            let digits: Vec<u8> = number.bytes().map(|byte| byte - b'0').collect();
            assert!(passes_luhn(&digits) && scan(&dlp, number).is_empty(), "{number}");
        }
        for card in [
            "4111111111111111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "6011111111111117",
            "30569309025904",
            "3530111333300000",
            "4222222222222",
        ] {
            assert_eq!(scan(&dlp, card), ["credit_card"], "{card}");
        }
    }

    #[test]
    fn the_digit_run_pass_agrees_with_a_naive_reading() {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"0123456789012345678901234567890123456789  --a\\n";
        let mut hits = DigitFindings::default();
        for _ in 0..20_000 {
            let length = random.gen_range(0..48);
            let body: Vec<u8> = (0..length).map(|_| alphabet[random.gen_range(0..alphabet.len())]).collect();
            let expected = naive_digit_findings(&body);
            let all = DigitFindings { card: true, ssn: true };
            assert_eq!(find_in_digit_runs(&body, all), expected, "{:?}", String::from_utf8_lossy(&body));
            hits.card |= expected.card;
            hits.ssn |= expected.ssn;
        }
        assert_eq!(hits, DigitFindings { card: true, ssn: true }, "the random bodies reach both detectors");
    }

    #[test]
    fn digit_flags_mark_exactly_the_digits() {
        for byte in 0..=u8::MAX {
            for filler in [0x00, b'/', b'0', b'9', b':', 0x7F, 0x80, 0xB0, 0xB9, 0xFF] {
                for index in 0..8 {
                    let mut bytes = [filler; 8];
                    bytes[index] = byte;
                    let expected = bytes
                        .iter()
                        .enumerate()
                        .fold(0u64, |flags, (at, byte)| flags | u64::from(byte.is_ascii_digit()) << (8 * at + 7));
                    assert_eq!(digit_flags(u64::from_le_bytes(bytes)), expected, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn byte_flags_mark_exactly_the_wanted_byte() {
        for wanted in [b'\\', b'"', 0x00, 0x7F, 0x80, 0xDC, 0xFF] {
            for byte in 0..=u8::MAX {
                for (index, filler) in [(0, wanted ^ 0x80), (1, wanted), (7, wanted ^ 1), (8, 0), (15, 0xFF)] {
                    let mut bytes = [filler; 16];
                    bytes[index] = byte;
                    let expected = bytes
                        .iter()
                        .enumerate()
                        .fold(0u128, |flags, (at, byte)| flags | u128::from(*byte == wanted) << (8 * at + 7));
                    assert_eq!(byte_flags(u128::from_le_bytes(bytes), wanted), expected, "{wanted} in {bytes:?}");
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let dlp = Dlp::compile(&section(&BUILTIN_DETECTORS, &[("custom", "[0-9]{3}x")])).expect("compiles");
        let mut random = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet = b"0123456789 -\\n\"udD8aAfF";
        for _ in 0..4000 {
            let length = random.gen_range(0..300);
            // Half the bodies start like JSON, so that they are decoded.
            let start: &[u8] = if random.gen_bool(0.5) { b"{\"" } else { b"" };
            let body: Vec<u8> = start
                .iter()
                .copied()
                .chain((0..length).map(|_| {
                    if random.gen_bool(0.3) {
                        random.gen()
                    } else {
                        alphabet[random.gen_range(0..alphabet.len())]
                    }
                }))
                .collect();
            let _ = dlp.scan(&body);
            if let Some(view) = decode_json_escapes(&body) {
                assert!(view.len() <= body.len());
            }
        }
    }

    #[test]
    fn luhn() {
        for valid in ["4111111111111111", "378282246310005", "6011111111111117", "5555555555554444", "79927398713"] {
            let digits: Vec<u8> = valid.bytes().map(|byte| byte - b'0').collect();
            assert!(passes_luhn(&digits), "{valid}");
        }
        for invalid in ["4111111111111112", "79927398710", "1234567812345678"] {
            let digits: Vec<u8> = invalid.bytes().map(|byte| byte - b'0').collect();
            assert!(!passes_luhn(&digits), "{invalid}");
        }
    }

    #[test]
    fn names_are_reported_once_in_configuration_order() {
        let dlp = Dlp::compile(&section(&["ssn", "credit_card", "ssn"], &[("project-falcon", "FALCON-[0-9]{4}")]))
            .expect("compiles");
        let text = "FALCON-1234 4111111111111111 123-45-6789 234-56-7890 FALCON-9999 4242424242424242";
        assert_eq!(scan(&dlp, text), ["ssn", "credit_card", "project-falcon"]);
        assert_eq!(dlp.detector_names().collect::<Vec<_>>(), ["ssn", "credit_card", "project-falcon"]);
    }

    #[test]
    fn custom_regexes_match() {
        let dlp =
            Dlp::compile(&section(&[], &[("project-falcon", "FALCON-[0-9]{4}"), ("internal", r"(?i)corp\.internal")]))
                .expect("compiles");
        assert_eq!(scan(&dlp, "see FALCON-2024 on CORP.Internal"), ["project-falcon", "internal"]);
        assert!(scan(&dlp, "FALCON-20 corp internal").is_empty());
    }

    #[test]
    fn action_sets_blocks() {
        assert!(all_builtins().blocks());
        let log = file::Dlp { action: file::DlpAction::Log, ..section(&["ssn"], &[]) };
        assert!(!Dlp::compile(&log).expect("compiles").blocks());
    }

    #[test]
    fn an_empty_section_matches_nothing() {
        let dlp = Dlp::compile(&section(&[], &[])).expect("compiles");
        assert!(dlp.scan(&body(PEM)).is_empty());
        assert!(Dlp::default().scan(&body(PEM)).is_empty());
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_path() {
        let error = Dlp::compile(&section(&["ssn", "passwords"], &[])).expect_err("refused");
        assert_eq!(
            error,
            (
                "detectors[1]".to_owned(),
                "unknown detector \"passwords\": choose from private_key, aws_access_key, github_token, credit_card, ssn"
                    .to_owned()
            )
        );
        let cases: [(Customs, &str, &str); 5] = [
            (&[("", "x")], "custom[0].name", "must not be empty"),
            (&[("a", "x"), ("a", "y")], "custom[1].name", "\"a\" is already the name of custom[0]"),
            (&[("ssn", "x")], "custom[0].name", "\"ssn\" is the name of a built-in detector"),
            (&[("a", "x"), ("b", "FALCON-[0-9")], "custom[1].regex", "invalid regex: regex parse error"),
            (&[("a", "x*")], "custom[0].regex", "matches the empty string"),
        ];
        for (custom, key, message) in cases {
            let (got_key, got_message) = Dlp::compile(&section(&[], custom)).expect_err("refused");
            assert_eq!(got_key, key);
            assert!(got_message.starts_with(message), "{got_message}");
        }
        let huge = section(&[], &[("huge", r"\w{1000}\w{1000}\w{1000}")]);
        let (key, message) = Dlp::compile(&huge).expect_err("refused");
        assert_eq!(key, "custom[0].regex");
        assert!(message.contains("size limit"), "{message}");
    }

    #[test]
    fn a_large_body_without_secrets_scans_clean() {
        let dlp =
            Dlp::compile(&section(&BUILTIN_DETECTORS, &[("project-falcon", "FALCON-[0-9]{4}")])).expect("compiles");
        let line = "fn handle(request: Request) -> Result<Response, Error> { let id = 12345; /* 2024-01-15 */ }\n";
        let text = line.repeat((1 << 20) / line.len() + 1);
        assert!(text.len() >= 1 << 20);
        assert!(scan(&dlp, &text).is_empty());
        let non_ascii = "Grüße, 世界! ".repeat(100_000);
        assert!(scan(&dlp, &non_ascii).is_empty());
    }
}
