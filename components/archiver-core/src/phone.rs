//! Phone numbers, short codes and alphanumeric sender ids in one normal form.
//!
//! The network reports E.164 numbers, the seed's mapping file holds bare international digits
//! (`445204334324`), admins type national numbers (`(312) 555-0199`), and businesses text from
//! short codes (`24273`) or sender ids (`ACMEBANK`). All of them become a [`PhoneAddress`], whose
//! [`key`](PhoneAddress::key) is the same for every spelling of one number.

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id as CountryId;
use serde::{Deserialize, Serialize};

/// Longest short code we accept (national short codes run from 3 to 8 digits).
const MAX_SHORT_CODE_DIGITS: usize = 8;
/// Alphanumeric sender ids are at most 11 characters on GSM networks.
const MAX_SENDER_ID_CHARS: usize = 11;

/// A participant's address on the mobile network, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PhoneAddress {
    /// A full international number, `+` and digits (`+13125550199`).
    E164(String),
    /// A short code, digits only (`24273`).
    ShortCode(String),
    /// An alphanumeric sender id as the network spelled it (`ACMEBANK`).
    SenderId(String),
}

impl PhoneAddress {
    /// The comparison key: equal for every spelling of one address.
    pub fn key(&self) -> String {
        match self {
            PhoneAddress::E164(number) | PhoneAddress::ShortCode(number) => number.clone(),
            PhoneAddress::SenderId(id) => id.to_uppercase(),
        }
    }

    /// The address as shown to people: the E.164 number, the short code, or the sender id.
    pub fn as_str(&self) -> &str {
        match self {
            PhoneAddress::E164(s) | PhoneAddress::ShortCode(s) | PhoneAddress::SenderId(s) => s,
        }
    }

    /// A stable local part for a synthetic email address: digits for numbers and short codes,
    /// lowercase letters and digits for sender ids.
    pub fn local_part(&self) -> String {
        self.as_str()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    /// Whether this is a full international number (the only kind a mapping file may hold).
    pub fn is_e164(&self) -> bool {
        matches!(self, PhoneAddress::E164(_))
    }
}

impl fmt::Display for PhoneAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a phone address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the number is empty")]
    Empty,
    #[error("{0:?} contains a character that no phone number or sender id has")]
    BadCharacter(String),
    #[error("{0:?} is not a valid international number")]
    InvalidInternational(String),
    #[error("{0:?} is neither a phone number nor a short code")]
    NotANumber(String),
    #[error("{0:?} is too long for an alphanumeric sender id")]
    SenderIdTooLong(String),
}

/// The region whose national format bare numbers are read in (e.g. `US`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(CountryId);

impl Region {
    pub const US: Region = Region(CountryId::US);
}

impl Default for Region {
    fn default() -> Self {
        Region::US
    }
}

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CountryId::from_str(&s.trim().to_ascii_uppercase())
            .map(Region)
            .map_err(|_| format!("{s:?} is not an ISO 3166 region code"))
    }
}

/// Normalises what the network or an admin wrote into a [`PhoneAddress`].
///
/// Bare digits are read first as a national number of `region`, then as international digits
/// without the `+` (the seed's mapping form); digits that are neither but short enough are a
/// short code. Anything with a letter is a sender id, kept as written.
pub fn normalize(raw: &str, region: Region) -> Result<PhoneAddress, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(PhoneError::BadCharacter(trimmed.to_string()));
    }
    if trimmed.chars().any(char::is_alphabetic) {
        return sender_id(trimmed);
    }

    let mut digits = String::with_capacity(trimmed.len());
    let mut plus = false;
    for (index, c) in trimmed.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if index == 0 => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' => {}
            _ => return Err(PhoneError::BadCharacter(trimmed.to_string())),
        }
    }
    if digits.is_empty() {
        return Err(PhoneError::NotANumber(trimmed.to_string()));
    }
    if plus {
        return international(&digits)
            .ok_or_else(|| PhoneError::InvalidInternational(trimmed.to_string()));
    }
    if let Some(international_digits) = digits.strip_prefix("00") {
        return international(international_digits)
            .ok_or_else(|| PhoneError::InvalidInternational(trimmed.to_string()));
    }
    if let Some(number) = parse_valid(Some(region.0), &digits) {
        return Ok(number);
    }
    if let Some(number) = international(&digits) {
        return Ok(number);
    }
    if digits.len() <= MAX_SHORT_CODE_DIGITS {
        return Ok(PhoneAddress::ShortCode(digits));
    }
    Err(PhoneError::NotANumber(trimmed.to_string()))
}

fn sender_id(trimmed: &str) -> Result<PhoneAddress, PhoneError> {
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, ' ' | '-' | '.' | '&' | '_' | '\'');
    if !trimmed.chars().all(allowed) {
        return Err(PhoneError::BadCharacter(trimmed.to_string()));
    }
    if trimmed.chars().count() > MAX_SENDER_ID_CHARS {
        return Err(PhoneError::SenderIdTooLong(trimmed.to_string()));
    }
    Ok(PhoneAddress::SenderId(trimmed.to_string()))
}

/// International digits (country code first): valid numbers, and numbers the numbering plan
/// may not know yet but whose length is possible for their country (the network knows best).
fn international(digits: &str) -> Option<PhoneAddress> {
    let with_plus = format!("+{digits}");
    let number = phonenumber::parse(None, &with_plus).ok()?;
    if phonenumber::is_valid(&number) || looks_possible(&number) {
        return Some(e164(&number));
    }
    None
}

fn parse_valid(region: Option<CountryId>, digits: &str) -> Option<PhoneAddress> {
    let number = phonenumber::parse(region, digits).ok()?;
    phonenumber::is_valid(&number).then(|| e164(&number))
}

/// A known country code and a national number of 6 to 14 digits, the span E.164 allows.
fn looks_possible(number: &phonenumber::PhoneNumber) -> bool {
    let national = number.national().value().to_string();
    let known_code = phonenumber::metadata::DATABASE
        .by_code(&number.country().code())
        .is_some();
    known_code && (6..=14).contains(&national.len())
}

fn e164(number: &phonenumber::PhoneNumber) -> PhoneAddress {
    PhoneAddress::E164(number.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(raw: &str) -> Result<PhoneAddress, PhoneError> {
        normalize(raw, Region::US)
    }

    fn e(number: &str) -> PhoneAddress {
        PhoneAddress::E164(number.to_string())
    }

    #[test]
    fn keeps_e164_numbers() {
        assert_eq!(us("+13125550199"), Ok(e("+13125550199")));
        assert_eq!(us(" +44 7911 123456 "), Ok(e("+447911123456")));
    }

    #[test]
    fn reads_bare_international_digits_of_the_seed_mapping_file() {
        assert_eq!(us("445204334324"), Ok(e("+445204334324")));
        assert_eq!(us("447911123456"), Ok(e("+447911123456")));
        assert_eq!(us("13125550199"), Ok(e("+13125550199")));
    }

    #[test]
    fn reads_national_formats_in_the_default_region() {
        assert_eq!(us("(312) 555-0199"), Ok(e("+13125550199")));
        assert_eq!(us("312.555.0199"), Ok(e("+13125550199")));
        let gb: Region = "gb".parse().unwrap();
        assert_eq!(normalize("07911 123456", gb), Ok(e("+447911123456")));
        assert_eq!(us("0044 7911 123456"), Ok(e("+447911123456")));
    }

    #[test]
    fn keeps_short_codes_and_sender_ids_as_written() {
        assert_eq!(us("24273"), Ok(PhoneAddress::ShortCode("24273".into())));
        assert_eq!(
            us("ACMEBANK"),
            Ok(PhoneAddress::SenderId("ACMEBANK".into()))
        );
        assert_eq!(
            us("Acme Bank"),
            Ok(PhoneAddress::SenderId("Acme Bank".into()))
        );
    }

    #[test]
    fn one_key_for_every_spelling() {
        let spellings = [
            "+13125550199",
            "13125550199",
            "(312) 555-0199",
            "+1 312 555 0199",
        ];
        for spelling in spellings {
            assert_eq!(us(spelling).unwrap().key(), "+13125550199", "{spelling}");
        }
        assert_eq!(us("AcmeBank").unwrap().key(), us("ACMEBANK").unwrap().key());
    }

    #[test]
    fn rejects_what_is_no_address() {
        assert_eq!(us(""), Err(PhoneError::Empty));
        assert_eq!(us("   "), Err(PhoneError::Empty));
        assert!(matches!(us("+1"), Err(PhoneError::InvalidInternational(_))));
        assert!(matches!(
            us("12345678901234567"),
            Err(PhoneError::NotANumber(_))
        ));
        assert!(matches!(
            us("+1 312\n555"),
            Err(PhoneError::BadCharacter(_))
        ));
        assert!(matches!(us("312*555"), Err(PhoneError::BadCharacter(_))));
        assert!(matches!(
            us("VERYLONGSENDERID"),
            Err(PhoneError::SenderIdTooLong(_))
        ));
        assert!(matches!(us("AC<ME>"), Err(PhoneError::BadCharacter(_))));
    }

    #[test]
    fn synthetic_local_parts_are_plain() {
        assert_eq!(e("+13125550199").local_part(), "13125550199");
        assert_eq!(us("Acme Bank").unwrap().local_part(), "acmebank");
    }

    #[test]
    fn region_codes_parse_case_insensitively() {
        assert!("us".parse::<Region>().is_ok());
        assert!("XX".parse::<Region>().is_err());
    }
}
