//! Export recognition: is a file bulk data or an archive, and how much personal data does its head
//! hold? Only counts leave this module, never content.

use std::path::Path;

use bannin::event::ExportInfo;

/// How many bytes of a file are enough to recognise it by its magic bytes (tar's `ustar` sits at
/// offset 257).
pub const MAGIC_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Row-oriented bulk data: CSV, JSON, SQL dumps, spreadsheets...
    Data,
    /// Compressed containers.
    Archive,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Data => "data",
            Class::Archive => "archive",
        }
    }
}

/// What a file looks like from its name and first bytes. The content wins when the two disagree,
/// so a zip renamed to `notes.txt` is still an archive.
pub fn recognise(path: &Path, head: &[u8]) -> Option<(Class, &'static str)> {
    let by_name = by_extension(path);
    match by_magic(head, by_name) {
        Some(found) => Some(found),
        None => by_name,
    }
}

fn by_extension(path: &Path) -> Option<(Class, &'static str)> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    let found = match extension.as_str() {
        "csv" => (Class::Data, "csv"),
        "tsv" => (Class::Data, "tsv"),
        "txt" => (Class::Data, "txt"),
        "json" => (Class::Data, "json"),
        "ndjson" | "jsonl" => (Class::Data, "ndjson"),
        "sql" => (Class::Data, "sql"),
        "dump" => (Class::Data, "dump"),
        "bak" => (Class::Data, "bak"),
        "xls" => (Class::Data, "xls"),
        "xlsx" => (Class::Data, "xlsx"),
        "parquet" => (Class::Data, "parquet"),
        "zip" => (Class::Archive, "zip"),
        "7z" => (Class::Archive, "7z"),
        "rar" => (Class::Archive, "rar"),
        "tar" => (Class::Archive, "tar"),
        "gz" | "tgz" => (Class::Archive, "gzip"),
        "zst" => (Class::Archive, "zstd"),
        "xz" => (Class::Archive, "xz"),
        _ => return None,
    };
    Some(found)
}

fn by_magic(head: &[u8], by_name: Option<(Class, &'static str)>) -> Option<(Class, &'static str)> {
    let named = by_name.map(|(_, format)| format);
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        // xlsx is a zip of XML parts; only the name tells them apart cheaply.
        return Some(if named == Some("xlsx") {
            (Class::Data, "xlsx")
        } else {
            (Class::Archive, "zip")
        });
    }
    if head.starts_with(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") {
        // The OLE container also holds Word documents; trust it as a spreadsheet only by name.
        return (named == Some("xls")).then_some((Class::Data, "xls"));
    }
    let magic: &[(&[u8], Class, &'static str)] = &[
        (b"7z\xbc\xaf\x27\x1c", Class::Archive, "7z"),
        (b"Rar!\x1a\x07", Class::Archive, "rar"),
        (b"\x1f\x8b", Class::Archive, "gzip"),
        (b"\x28\xb5\x2f\xfd", Class::Archive, "zstd"),
        (b"\xfd7zXZ\x00", Class::Archive, "xz"),
        (b"PAR1", Class::Data, "parquet"),
        (b"PGDMP", Class::Data, "dump"),
        (b"SQLite format 3\x00", Class::Data, "sqlite"),
    ];
    if let Some((_, class, format)) = magic.iter().find(|(bytes, _, _)| head.starts_with(bytes)) {
        return Some((*class, format));
    }
    if head.get(257..262) == Some(b"ustar") {
        return Some((Class::Archive, "tar"));
    }
    None
}

/// Whether the sample is text worth scanning for rows and personal data.
fn is_text_format(format: &str) -> bool {
    matches!(
        format,
        "csv" | "tsv" | "txt" | "json" | "ndjson" | "sql" | "dump" | "bak"
    )
}

/// Builds the export facts of a recognised file from its head `sample` and its full `size`.
pub fn export_info(class: Class, format: &'static str, sample: &[u8], size: u64) -> ExportInfo {
    let mut info = ExportInfo {
        class: class.as_str().to_string(),
        format: format.to_string(),
        est_rows: None,
        sampled_bytes: sample.len() as u64,
        ..ExportInfo::default()
    };
    if !is_text_format(format) {
        return info;
    }
    info.est_rows = Some(estimate_rows(sample, size));
    let counts = count_pii(sample);
    info.emails = counts.emails;
    info.phones = counts.phones;
    info.passports = counts.passports;
    info.cards = counts.cards;
    info
}

/// Lines in the sample, scaled up by how much of the file the sample covers.
fn estimate_rows(sample: &[u8], size: u64) -> u64 {
    let newlines = sample.iter().filter(|&&b| b == b'\n').count() as u64;
    let sampled = sample.len() as u64;
    if sampled == 0 {
        return 0;
    }
    if sampled >= size {
        let unterminated = u64::from(sample.last() != Some(&b'\n'));
        return newlines + unterminated;
    }
    let scaled = u128::from(newlines) * u128::from(size) / u128::from(sampled);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PiiCounts {
    pub emails: u64,
    pub phones: u64,
    pub passports: u64,
    pub cards: u64,
}

/// Counts e-mail addresses, phone numbers (Japanese domestic and `+` international forms),
/// passport-like tokens (two capitals and seven digits) and card numbers passing Luhn.
pub fn count_pii(text: &[u8]) -> PiiCounts {
    let mut counts = PiiCounts {
        emails: count_emails(text),
        ..PiiCounts::default()
    };
    let mut i = 0;
    while i < text.len() {
        let at_boundary = i == 0 || !text[i - 1].is_ascii_alphanumeric();
        if !at_boundary {
            i += 1;
            continue;
        }
        let byte = text[i];
        let starts_number = byte.is_ascii_digit()
            || (byte == b'+' && text.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts_number {
            let end = number_run_end(text, i);
            let ends_at_boundary = text.get(end).is_none_or(|b| !b.is_ascii_alphanumeric());
            if ends_at_boundary {
                match classify_number(&text[i..end]) {
                    Some(NumberKind::Card) => counts.cards += 1,
                    Some(NumberKind::Phone) => counts.phones += 1,
                    None => {}
                }
            }
            i = end.max(i + 1);
            continue;
        }
        if is_passport_at(text, i) {
            counts.passports += 1;
            i += 9;
            continue;
        }
        i += 1;
    }
    counts
}

fn is_passport_at(text: &[u8], i: usize) -> bool {
    let Some(token) = text.get(i..i + 9) else {
        return false;
    };
    token[..2].iter().all(u8::is_ascii_uppercase)
        && token[2..].iter().all(u8::is_ascii_digit)
        && text.get(i + 9).is_none_or(|b| !b.is_ascii_alphanumeric())
}

fn count_emails(text: &[u8]) -> u64 {
    let is_local =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let is_domain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-');
    let mut count = 0;
    for (at, _) in text.iter().enumerate().filter(|(_, b)| **b == b'@') {
        let local_start = text[..at]
            .iter()
            .rposition(|&b| !is_local(b))
            .map_or(0, |p| p + 1);
        let local = &text[local_start..at];
        if local.is_empty() || local[0] == b'.' {
            continue;
        }
        let domain_end = text[at + 1..]
            .iter()
            .position(|&b| !is_domain(b))
            .map_or(text.len(), |p| at + 1 + p);
        let domain = trim_end(&text[at + 1..domain_end], |b| b == b'.' || b == b'-');
        let mut labels = domain.split(|&b| b == b'.');
        let all_labels_filled = domain.split(|&b| b == b'.').all(|l| !l.is_empty());
        let tld_ok = labels
            .next_back()
            .is_some_and(|tld| tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic));
        if domain.contains(&b'.') && all_labels_filled && tld_ok {
            count += 1;
        }
    }
    count
}

fn trim_end(bytes: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    let end = bytes.iter().rposition(|&b| !strip(b)).map_or(0, |p| p + 1);
    &bytes[..end]
}

/// The end of a run of digits joined by at most two separators at a time (`-`, space, parens), as
/// in `090-1234-5678`, `+81 (3) 1234-5678` or `4111 1111 1111 1111`.
fn number_run_end(text: &[u8], start: usize) -> usize {
    let is_separator = |b: u8| matches!(b, b'-' | b' ' | b'(' | b')');
    let mut i = start;
    if text[i] == b'+' {
        i += 1;
    }
    let mut end = i;
    loop {
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        end = end.max(i);
        let mut j = i;
        while j < text.len() && j - i < 2 && is_separator(text[j]) {
            j += 1;
        }
        if j > i && text.get(j).is_some_and(u8::is_ascii_digit) {
            i = j;
        } else {
            return end;
        }
    }
}

enum NumberKind {
    Card,
    Phone,
}

fn classify_number(run: &[u8]) -> Option<NumberKind> {
    let digits: Vec<u8> = run
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    let international = run.first() == Some(&b'+');
    let separated = run.iter().any(|b| !b.is_ascii_digit() && *b != b'+');
    let has_parens = run.iter().any(|b| matches!(b, b'(' | b')'));
    if international {
        return (10..=15)
            .contains(&digits.len())
            .then_some(NumberKind::Phone);
    }
    if !has_parens
        && (13..=19).contains(&digits.len())
        && (2..=6).contains(&digits[0])
        && luhn_valid(&digits)
    {
        return Some(NumberKind::Card);
    }
    if digits.first() == Some(&0) {
        if separated && (10..=11).contains(&digits.len()) && digits[1] != 0 {
            return Some(NumberKind::Phone);
        }
        // Unseparated, only the unmistakable 11-digit mobile and IP-phone ranges (070, 080, 090, 050).
        let mobile = digits.len() == 11 && matches!(digits[1], 5 | 7 | 8 | 9) && digits[2] == 0;
        if !separated && mobile {
            return Some(NumberKind::Phone);
        }
    }
    None
}

fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_of_personal_data_in_mixed_text() {
        let text = "name,email,phone,passport,card\n\
            山田太郎,taro.yamada@example.co.jp,090-1234-5678,TK1234567,4111 1111 1111 1111\n\
            Hanako,hanako+work@mail.example.com,03-1234-5678,MZ7654321,5500-0000-0000-0004\n\
            Intl,a@b.io,+81-90-1234-5678,XX12345678,4111111111111112\n\
            Plain,not-an-email@localhost,09012345678,tk1234567,0123456789\n\
            Dates,2024-01-15,12:30:00,order 1234567,(03)1234-5678\n";
        let counts = count_pii(text.as_bytes());
        assert_eq!(
            counts,
            PiiCounts {
                emails: 3,
                phones: 5,
                passports: 2,
                cards: 2,
            }
        );
    }

    #[test]
    fn luhn_accepts_real_test_numbers_and_rejects_off_by_one() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn_valid(&digits("4111111111111111")));
        assert!(luhn_valid(&digits("378282246310005")));
        assert!(!luhn_valid(&digits("4111111111111112")));
    }

    #[test]
    fn content_wins_over_the_name() {
        let zip = b"PK\x03\x04rest";
        assert_eq!(
            recognise(Path::new("/x/notes.txt"), zip),
            Some((Class::Archive, "zip"))
        );
        assert_eq!(
            recognise(Path::new("/x/book.XLSX"), zip),
            Some((Class::Data, "xlsx"))
        );
        assert_eq!(
            recognise(Path::new("/x/blob.bin"), b"\x1f\x8b\x08\x00"),
            Some((Class::Archive, "gzip"))
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(
            recognise(Path::new("/x/backup"), &tar),
            Some((Class::Archive, "tar"))
        );
        assert_eq!(
            recognise(Path::new("/x/a.csv"), b"id,name\n"),
            Some((Class::Data, "csv"))
        );
        assert_eq!(recognise(Path::new("/x/main.rs"), b"fn main() {}"), None);
    }

    #[test]
    fn rows_are_extrapolated_from_the_sample() {
        let sample = b"a,b\n1,2\n3,4\n5,6\n";
        assert_eq!(estimate_rows(sample, sample.len() as u64), 4);
        assert_eq!(estimate_rows(b"a\nb", 3), 2);
        assert_eq!(estimate_rows(sample, sample.len() as u64 * 1000), 4000);
        let info = export_info(Class::Archive, "zip", b"PK\x03\x04", 1 << 30);
        assert_eq!(info.est_rows, None);
        assert_eq!(info.emails, 0);
    }
}
