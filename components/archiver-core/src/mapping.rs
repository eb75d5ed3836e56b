//! The mapping file: which mobile number belongs to which user mailbox, and since when.
//!
//! Two forms are read:
//! - the seed's two columns `External User ID,Microsoft 365 User Mailbox`, numbers as bare
//!   international digits (the header may be left out);
//! - a headed form `phone,email[,valid_from][,valid_to]`, where the dates let a reassigned number
//!   route old messages to the old user and new ones to the new user.
//!
//! Header names are case-insensitive; a UTF-8 BOM and CRLF line ends are accepted. A file with any
//! bad row is rejected whole, with every bad row reported by line and column.
//!
//! Validity dates are UTC. A date (`2026-03-01`) in `valid_from` starts at 00:00 that day; in
//! `valid_to` it includes the whole day. An RFC 3339 instant is taken as it is, `valid_to` then
//! being exclusive.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::phone::{self, PhoneAddress, Region};
use crate::resolve::is_deliverable_address;

/// One row of the mapping in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingEntry {
    /// Always [`PhoneAddress::E164`].
    pub phone: PhoneAddress,
    pub email: String,
    /// Inclusive start, if any.
    pub valid_from: Option<DateTime<Utc>>,
    /// Exclusive end, if any.
    pub valid_until: Option<DateTime<Utc>>,
}

impl MappingEntry {
    pub fn is_valid_at(&self, at: DateTime<Utc>) -> bool {
        self.valid_from.is_none_or(|from| from <= at)
            && self.valid_until.is_none_or(|until| at < until)
    }

    fn overlaps(&self, other: &MappingEntry) -> bool {
        let starts_before_other_ends = match (self.valid_from, other.valid_until) {
            (Some(from), Some(until)) => from < until,
            _ => true,
        };
        let other_starts_before_this_ends = match (other.valid_from, self.valid_until) {
            (Some(from), Some(until)) => from < until,
            _ => true,
        };
        starts_before_other_ends && other_starts_before_this_ends
    }
}

/// A validated mapping file, indexed by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingTable {
    by_number: BTreeMap<String, Vec<MappingEntry>>,
}

impl MappingTable {
    /// The mailbox `address` belongs to at `at`, if the mapping names one.
    pub fn lookup(&self, address: &PhoneAddress, at: DateTime<Utc>) -> Option<&str> {
        self.by_number
            .get(&address.key())?
            .iter()
            .find(|entry| entry.is_valid_at(at))
            .map(|entry| entry.email.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_number.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    /// Every entry, ordered by number and then start date.
    pub fn entries(&self) -> impl Iterator<Item = &MappingEntry> {
        self.by_number.values().flatten()
    }

    /// Reads back what [`MappingTable::to_csv`] wrote, without validating each number again
    /// (phone number parsing is most of the cost of reading a large mapping, at every step).
    /// `None` for text it did not write; [`parse_mapping_csv`] reads that.
    pub fn from_stored_csv(text: &str) -> Option<MappingTable> {
        let mut lines = text.split("\r\n");
        if lines.next()? != "phone,email,valid_from,valid_to" {
            return None;
        }
        let instant = |field: &str| match field {
            "" => Some(None),
            t => DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| Some(t.with_timezone(&Utc))),
        };
        let mut by_number: BTreeMap<String, Vec<MappingEntry>> = BTreeMap::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let [phone, email, from, until] = line.split(',').collect::<Vec<_>>()[..] else {
                return None;
            };
            let digits = phone.strip_prefix('+')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || email.is_empty()
            {
                return None;
            }
            by_number
                .entry(phone.to_string())
                .or_default()
                .push(MappingEntry {
                    phone: PhoneAddress::E164(phone.to_string()),
                    email: email.to_string(),
                    valid_from: instant(from)?,
                    valid_until: instant(until)?,
                });
        }
        Some(MappingTable { by_number })
    }

    /// The mapping in the headed form, which [`parse_mapping_csv`] reads back unchanged.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("phone,email,valid_from,valid_to\r\n");
        for entry in self.entries() {
            out.push_str(&format!(
                "{},{},{},{}\r\n",
                entry.phone,
                entry.email,
                instant(entry.valid_from).unwrap_or_default(),
                instant(entry.valid_until).unwrap_or_default()
            ));
        }
        out
    }

    /// What a checked file would apply, for an admin to look at before saving it: the row
    /// count and the first `rows` rows.
    pub fn preview(&self, rows: usize) -> serde_json::Value {
        let preview: Vec<_> = self
            .entries()
            .take(rows)
            .map(|entry| {
                serde_json::json!({
                    "phone": entry.phone.to_string(),
                    "email": entry.email,
                    "valid_from": instant(entry.valid_from),
                    "valid_to": instant(entry.valid_until),
                })
            })
            .collect();
        serde_json::json!({ "rows": self.len(), "preview": preview })
    }
}

/// A validity bound as the stored form writes it.
fn instant(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// What is wrong with one cell or row of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct RowError {
    /// 1-based line of the file.
    pub line: usize,
    /// 1-based field position in the row.
    pub column: usize,
    pub reason: String,
}

/// Every problem of a rejected file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the mapping file has {} error(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct MappingErrors(pub Vec<RowError>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Phone,
    Email,
    ValidFrom,
    ValidTo,
}

impl Column {
    fn from_header(name: &str) -> Option<Column> {
        match name.trim().to_ascii_lowercase().as_str() {
            "phone" | "phone number" | "mobile" | "mobile number" | "external user id" => {
                Some(Column::Phone)
            }
            "email" | "email address" | "mailbox" | "microsoft 365 user mailbox" => {
                Some(Column::Email)
            }
            "valid_from" | "valid from" => Some(Column::ValidFrom),
            "valid_to" | "valid to" => Some(Column::ValidTo),
            _ => None,
        }
    }
}

/// The seed's headerless form: number, then mailbox.
const HEADERLESS_LAYOUT: [Column; 2] = [Column::Phone, Column::Email];

/// Parses and validates a mapping file.
pub fn parse_mapping_csv(bytes: &[u8], region: Region) -> Result<MappingTable, MappingErrors> {
    let mut errors = Vec::new();
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            let line_start = bytes[..e.valid_up_to()]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let column = bytes[line_start..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b',')
                .count()
                + 1;
            return Err(MappingErrors(vec![RowError {
                line,
                column,
                reason: "the file is not UTF-8 text; save it as CSV UTF-8".into(),
            }]));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut layout: Option<Vec<Column>> = None;
    let mut rows: Vec<(usize, MappingEntry)> = Vec::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line = index + 1;
        let raw_line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        if raw_line.trim().is_empty() {
            continue;
        }
        let fields = match split_fields(raw_line) {
            Ok(fields) => fields,
            Err(reason) => {
                errors.push(RowError {
                    line,
                    column: 1,
                    reason,
                });
                continue;
            }
        };
        let columns = match &layout {
            Some(columns) => columns,
            None => match read_header(&fields, line, region, &mut errors) {
                Header::Names(columns) => {
                    layout = Some(columns);
                    continue;
                }
                Header::Missing => layout.insert(HEADERLESS_LAYOUT.to_vec()),
                Header::Invalid => return Err(MappingErrors(errors)),
            },
        };
        if fields.len() != columns.len() {
            errors.push(RowError {
                line,
                column: fields.len().min(columns.len()) + 1,
                reason: format!("expected {} fields, found {}", columns.len(), fields.len()),
            });
            continue;
        }
        if let Some(entry) = read_row(columns, &fields, line, region, &mut errors) {
            rows.push((line, entry));
        }
    }
    if layout.is_none() {
        errors.push(RowError {
            line: 1,
            column: 1,
            reason: "the file is empty".into(),
        });
    }

    let mut by_number: BTreeMap<String, Vec<(usize, MappingEntry)>> = BTreeMap::new();
    for (line, entry) in rows {
        let same_number = by_number.entry(entry.phone.key()).or_default();
        if let Some((earlier, _)) = same_number.iter().find(|(_, other)| other.overlaps(&entry)) {
            errors.push(RowError {
                line,
                column: phone_column(layout.as_deref()),
                reason: format!(
                    "{} is already mapped on line {earlier} for overlapping dates",
                    entry.phone
                ),
            });
            continue;
        }
        same_number.push((line, entry));
    }

    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(MappingErrors(errors));
    }
    let by_number = by_number
        .into_iter()
        .map(|(number, mut entries)| {
            entries.sort_by_key(|(_, e)| e.valid_from);
            (number, entries.into_iter().map(|(_, e)| e).collect())
        })
        .collect();
    Ok(MappingTable { by_number })
}

fn phone_column(layout: Option<&[Column]>) -> usize {
    layout
        .and_then(|columns| columns.iter().position(|c| *c == Column::Phone))
        .map_or(1, |p| p + 1)
}

/// Splits one line by the CSV rules (quotes, doubled quotes). A quoted field never spans lines
/// here: no mapping value holds a line break, and this keeps every error on its true line.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    let mut record = csv::StringRecord::new();
    match reader.read_record(&mut record) {
        Ok(true) => Ok(record.iter().map(|f| f.trim().to_string()).collect()),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(format!("unreadable CSV: {e}")),
    }
}

enum Header {
    Names(Vec<Column>),
    Missing,
    Invalid,
}

fn read_header(
    fields: &[String],
    line: usize,
    region: Region,
    errors: &mut Vec<RowError>,
) -> Header {
    let known: Vec<Option<Column>> = fields.iter().map(|f| Column::from_header(f)).collect();
    if known.iter().all(Option::is_none) {
        let is_number = phone::normalize(&fields[0], region).is_ok_and(|a| a.is_e164());
        if fields.len() == 2 && is_number {
            return Header::Missing;
        }
        errors.push(RowError {
            line,
            column: 1,
            reason: "no header: expected `phone,email` (optionally `valid_from,valid_to`) or \
                     `External User ID,Microsoft 365 User Mailbox`"
                .into(),
        });
        return Header::Invalid;
    }
    let mut columns = Vec::with_capacity(fields.len());
    for (index, (name, column)) in fields.iter().zip(known).enumerate() {
        match column {
            Some(column) if columns.contains(&column) => errors.push(RowError {
                line,
                column: index + 1,
                reason: format!("column {name:?} appears twice"),
            }),
            Some(column) => columns.push(column),
            None => errors.push(RowError {
                line,
                column: index + 1,
                reason: format!(
                    "unknown column {name:?}; expected phone, email, valid_from or valid_to"
                ),
            }),
        }
    }
    for (required, name) in [(Column::Phone, "phone"), (Column::Email, "email")] {
        if !columns.contains(&required) {
            errors.push(RowError {
                line,
                column: 1,
                reason: format!("the header has no `{name}` column"),
            });
        }
    }
    if errors.is_empty() {
        Header::Names(columns)
    } else {
        Header::Invalid
    }
}

fn read_row(
    columns: &[Column],
    fields: &[String],
    line: usize,
    region: Region,
    errors: &mut Vec<RowError>,
) -> Option<MappingEntry> {
    let errors_before = errors.len();
    let mut phone = None;
    let mut email = None;
    let mut valid_from = None;
    let mut valid_until = None;
    for (index, (column, value)) in columns.iter().zip(fields).enumerate() {
        let mut fail = |reason: String| {
            errors.push(RowError {
                line,
                column: index + 1,
                reason,
            })
        };
        match column {
            Column::Phone => match phone::normalize(value, region) {
                Ok(address) if address.is_e164() => phone = Some(address),
                Ok(address) => fail(format!(
                    "{value:?} is a short code or sender id ({address}), not a mobile number"
                )),
                Err(e) => fail(format!("invalid number: {e}")),
            },
            Column::Email => {
                if is_deliverable_address(value) {
                    email = Some(value.clone());
                } else {
                    fail(format!("{value:?} is not a valid email address"));
                }
            }
            Column::ValidFrom => match parse_bound(value, Bound::Start) {
                Ok(bound) => valid_from = bound,
                Err(reason) => fail(reason),
            },
            Column::ValidTo => match parse_bound(value, Bound::End) {
                Ok(bound) => valid_until = bound,
                Err(reason) => fail(reason),
            },
        }
    }
    if let (Some(from), Some(until)) = (valid_from, valid_until)
        && from >= until
    {
        errors.push(RowError {
            line,
            column: columns
                .iter()
                .position(|c| *c == Column::ValidTo)
                .map_or(1, |p| p + 1),
            reason: "valid_to is before valid_from".into(),
        });
    }
    if errors.len() > errors_before {
        return None;
    }
    Some(MappingEntry {
        phone: phone?,
        email: email?,
        valid_from,
        valid_until,
    })
}

#[derive(Clone, Copy)]
enum Bound {
    Start,
    End,
}

fn parse_bound(value: &str, bound: Bound) -> Result<Option<DateTime<Utc>>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let day = match bound {
            Bound::Start => Some(date),
            Bound::End => date.checked_add_days(Days::new(1)),
        };
        return day
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| Some(t.and_utc()))
            .ok_or_else(|| format!("{value:?} is out of range"));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| format!("{value:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MappingTable, MappingErrors> {
        parse_mapping_csv(text.as_bytes(), Region::US)
    }

    fn errors(text: &str) -> Vec<RowError> {
        parse(text).expect_err("file must be rejected").0
    }

    fn number(n: &str) -> PhoneAddress {
        PhoneAddress::E164(n.into())
    }

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    #[test]
    fn reads_the_seed_two_column_form() {
        let table = parse(
            "External User ID,Microsoft 365 User Mailbox\n445204334324,sam@acme.example\n\
             12025550101,alice@acme.example\n",
        )
        .unwrap();
        assert_eq!(table.len(), 2);
        let now = at("2026-11-25T00:00:00Z");
        assert_eq!(
            table.lookup(&number("+445204334324"), now),
            Some("sam@acme.example")
        );
        assert_eq!(
            table.lookup(&number("+12025550101"), now),
            Some("alice@acme.example")
        );
        assert_eq!(table.lookup(&number("+12025550102"), now), None);
    }

    #[test]
    fn reads_the_seed_form_without_its_header() {
        let table = parse("445204334324,sam@acme.example\n").unwrap();
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn accepts_bom_crlf_blank_lines_quotes_and_any_header_case() {
        let table =
            parse("\u{feff}PHONE,Email\r\n\r\n\"+1 (202) 555-0101\",alice@acme.example\r\n  \r\n")
                .unwrap();
        assert_eq!(
            table.lookup(&number("+12025550101"), at("2026-01-01T00:00:00Z")),
            Some("alice@acme.example")
        );
    }

    #[test]
    fn validity_dates_route_a_reassigned_number_by_sent_at() {
        let table = parse(
            "phone,email,valid_from,valid_to\n\
             +12025550150,old@acme.example,,2026-06-30\n\
             +12025550150,new@acme.example,2026-07-01,\n",
        )
        .unwrap();
        let n = number("+12025550150");
        assert_eq!(
            table.lookup(&n, at("2026-06-30T23:59:59Z")),
            Some("old@acme.example")
        );
        assert_eq!(
            table.lookup(&n, at("2026-07-01T00:00:00Z")),
            Some("new@acme.example")
        );
    }

    #[test]
    fn reports_every_bad_row_with_line_and_column() {
        let errs = errors(
            "phone,email\n\
             +12025550101,alice@acme.example\n\
             not-a-number,bob@acme.example\n\
             +12025550103,bob at acme\n\
             24273,short@acme.example\n\
             +12025550104\n",
        );
        let places: Vec<(usize, usize)> = errs.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(places, [(3, 1), (4, 2), (5, 1), (6, 2)], "{errs:?}");
        assert!(errs[0].reason.contains("invalid number"), "{}", errs[0]);
        assert!(
            errs[1]
                .reason
                .contains("\"bob at acme\" is not a valid email")
        );
        assert!(errs[2].reason.contains("short code"));
        assert!(errs[3].reason.contains("expected 2 fields, found 1"));
        assert_eq!(
            errs[1].to_string(),
            "line 4, column 2: \"bob at acme\" is not a valid email address"
        );
    }

    #[test]
    fn line_numbers_count_crlf_and_blank_lines() {
        let errs =
            errors("phone,email\r\n\r\n+12025550101,alice@acme.example\r\n\r\nbad,x@y.z\r\n");
        assert_eq!((errs[0].line, errs[0].column), (5, 1));
    }

    #[test]
    fn the_same_number_for_overlapping_dates_is_an_error() {
        let errs = errors(
            "phone,email,valid_from,valid_to\n\
             +12025550150,old@acme.example,,2026-07-15\n\
             12025550150,new@acme.example,2026-07-01,\n",
        );
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (3, 1));
        assert!(
            errs[0].reason.contains("already mapped on line 2"),
            "{}",
            errs[0]
        );
        let errs =
            errors("phone,email\n+12025550150,a@acme.example\n+12025550150,a@acme.example\n");
        assert_eq!(errs[0].line, 3);
    }

    #[test]
    fn rejects_bad_dates_and_reversed_ranges() {
        let errs = errors(
            "phone,email,valid_from,valid_to\n\
             +12025550150,a@acme.example,yesterday,\n\
             +12025550151,b@acme.example,2026-07-02,2026-07-01\n",
        );
        assert_eq!((errs[0].line, errs[0].column), (2, 3));
        assert_eq!((errs[1].line, errs[1].column), (3, 4));
        assert!(errs[1].reason.contains("before valid_from"));
    }

    #[test]
    fn rejects_unknown_duplicate_or_missing_columns() {
        let errs = errors("phone,email,vaild_from\n");
        assert_eq!((errs[0].line, errs[0].column), (1, 3));
        assert!(errs[0].reason.contains("vaild_from"));
        let errs = errors("phone,phone,email\n");
        assert_eq!((errs[0].line, errs[0].column), (1, 2));
        assert!(
            errors("email,valid_from\n")[0]
                .reason
                .contains("no `phone` column")
        );
        assert!(
            errors("name,team\nAlice,Sales\n")[0]
                .reason
                .contains("no header")
        );
        assert!(errors("")[0].reason.contains("empty"));
    }

    #[test]
    fn a_file_in_another_encoding_is_rejected_with_its_line() {
        let bytes = b"phone,email\n+12025550101,ren\xe9@acme.example\n";
        let errs = parse_mapping_csv(bytes, Region::US).unwrap_err().0;
        assert_eq!((errs[0].line, errs[0].column), (2, 2));
        assert!(errs[0].reason.contains("UTF-8"));
    }

    #[test]
    fn a_quote_left_open_is_an_error_on_its_line() {
        let errs = errors("phone,email\n\"+12025550101,alice@acme.example\n");
        assert_eq!(errs[0].line, 2);
    }

    #[test]
    fn to_csv_reads_back_to_the_same_table() {
        let table = parse(
            "phone,email,valid_from,valid_to\n\
             +12025550150,old@acme.example,,2026-06-30\n\
             +12025550150,new@acme.example,2026-07-01T08:30:00Z,\n\
             445204334324,sam@acme.example,,\n",
        )
        .unwrap();
        let again = parse(&table.to_csv()).unwrap();
        assert_eq!(again, table);
        assert_eq!(table.entries().count(), 3);
        assert_eq!(MappingTable::from_stored_csv(&table.to_csv()), Some(table));
    }

    #[test]
    fn only_text_to_csv_wrote_is_read_without_validation() {
        let header = "phone,email,valid_from,valid_to\r\n";
        for foreign in [
            "+12025550150,a@acme.example\n".to_string(),
            format!("{header}2025550150,a@acme.example,,\r\n"),
            format!("{header}+1202555015x,a@acme.example,,\r\n"),
            format!("{header}+12025550150,,,\r\n"),
            format!("{header}+12025550150,a@acme.example,yesterday,\r\n"),
            format!("{header}+12025550150,a@acme.example,,,\r\n"),
        ] {
            assert_eq!(MappingTable::from_stored_csv(&foreign), None, "{foreign:?}");
        }
        assert_eq!(
            MappingTable::from_stored_csv(header),
            Some(MappingTable::default())
        );
    }
}
