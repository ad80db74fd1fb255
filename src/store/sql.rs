//! Small SQL helpers: literals, id lists, claim guards, times.

use super::*;

/// `id IN (…) AND (id, claim_token) IN (…)`: the id list lets the optimizer use the
/// primary key; the pairs pin each row to one claim.
pub(super) fn token_match(held: &[Held]) -> String {
    let mut pairs = String::new();
    for (i, (id, token)) in held.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        let _ = write!(pairs, "({id},{token})");
    }
    format!(
        "id IN ({}) AND (id, claim_token) IN ({pairs})",
        id_list(held.iter().map(|h| h.0))
    )
}

/// A job's tags as stored: comma-joined (a tag has no comma), `NULL` for none.
pub(super) fn join_tags(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| tags.join(","))
}

/// The tags of a stored `tags` value.
pub(crate) fn split_tags(stored: Option<&str>) -> Vec<String> {
    stored
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The guard on every write after a claim but a success: the row is still running under
/// this very claim. A late write (a retry after a lost reply, a process that stalled)
/// can never change a newer claim of the same job, not even this process's own.
pub(super) fn claim_guard(held: &[Held], worker: &str) -> String {
    format!(
        concat!("{} AND reserved_by = {} AND status = ", st!(running)),
        token_match(held),
        sql_string(worker)
    )
}

/// The guard on a success: the row is still under this claim, or was taken from it by a
/// rescuer (which keeps the token) and has not been claimed since. A run that finished
/// after its process stalled past the staleness did succeed; recording it keeps a job the
/// rescuer failed or queued again from running (or staying failed) for nothing.
pub(super) fn success_guard(held: &[Held]) -> String {
    format!(
        concat!(
            "{} AND status IN (",
            st!(running),
            ", ",
            st!(pending),
            ", ",
            st!(failed),
            ")"
        ),
        token_match(held)
    )
}

/// Column `i` of `row` as text, whatever bytes it holds (`None` for NULL).
pub(crate) fn text(row: &mut mysql_async::Row, i: usize) -> Option<String> {
    let bytes: Option<Vec<u8>> = row.take_opt(i).and_then(|v| v.ok());
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A string as a hex literal with a charset introducer: no escaping, whatever the
/// server's `sql_mode` (NO_BACKSLASH_ESCAPES changes what a quoted literal means), and it
/// still compares in the column's collation, so the index is used.
pub(super) fn sql_string(s: &str) -> String {
    let mut out = String::with_capacity(12 + 2 * s.len());
    out.push_str("_utf8mb4 X'");
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
    out
}

/// `X'…',X'…'`: strings as binary literals, for comparisons byte for byte (no collation,
/// no padding) against `CAST(column AS BINARY)`.
pub(super) fn bytes_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("X'");
        for b in s.bytes() {
            let _ = write!(out, "{b:02x}");
        }
        out.push('\'');
    }
    out
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Ids are integers we read from the table, so inlining them is safe, and it keeps the
/// statement text free of a variable number of placeholders.
pub(super) fn id_list(ids: impl Iterator<Item = u64>) -> String {
    let mut s = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{id}");
    }
    s
}

/// `last_error` is TEXT (64 KiB); a longer message is cut on a char boundary.
pub(super) fn truncate_error(error: &str) -> &str {
    const MAX: usize = 60_000;
    if error.len() <= MAX {
        return error;
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// A UTC calendar DATETIME for `t`; times before 1970 or after 9999 are refused.
pub(crate) fn datetime_value(t: SystemTime) -> Result<Value> {
    use chrono::{Datelike, Timelike};
    if t < UNIX_EPOCH {
        return Err(Error::invalid(
            "run_at",
            "times before 1970 are not supported",
        ));
    }
    let at = chrono::DateTime::<chrono::Utc>::from(t);
    let year = u16::try_from(at.year())
        .ok()
        .filter(|y| *y <= 9999)
        .ok_or_else(|| Error::invalid("run_at", "times after year 9999 are not supported"))?;
    // Each field is in range by construction (month 1–12, hour 0–23, …).
    let field = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
    Ok(Value::Date(
        year,
        field(at.month()),
        field(at.day()),
        field(at.hour()),
        field(at.minute()),
        field(at.second()),
        at.timestamp_subsec_micros(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_of_instant() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_867_509_123_456);
        assert_eq!(
            datetime_value(t).unwrap(),
            Value::Date(2026, 11, 28, 12, 5, 9, 123_456)
        );
        assert!(datetime_value(UNIX_EPOCH - Duration::from_secs(1)).is_err());
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(
            datetime_value(leap).unwrap(),
            Value::Date(2000, 2, 29, 0, 0, 0, 0)
        );
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800); // 10000-01-01
        assert!(datetime_value(far).is_err());
    }

    #[test]
    fn string_literals_need_no_escaping() {
        assert_eq!(sql_string("it's"), "_utf8mb4 X'69742773'");
        assert_eq!(sql_string(""), "_utf8mb4 X''");
        assert_eq!(sql_string("é"), "_utf8mb4 X'c3a9'");
    }

    #[test]
    fn id_lists_and_truncation() {
        assert_eq!(id_list([1u64, 22, 333].into_iter()), "1,22,333");
        let long = "é".repeat(40_000);
        let cut = truncate_error(&long);
        assert!(cut.len() <= 60_000 && cut.chars().all(|c| c == 'é'));
    }
}
