//! The dashboard's HTML: what it reads from the queue and how it shows it.
//!
//! Every piece of text from the database goes through [`Esc`]; numbers are written as
//! numbers. Long payloads and errors are cut so that fifty failed jobs with 1 MiB payloads
//! still make a page a browser can open.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display, Write as _};

use super::{Outcome, FAILED_SHOWN, RECENT_SHOWN};
use crate::queue::JobQueue;
use crate::store::{JobRecord, QueueCount, Status, JOB_STATUSES};

/// Characters of an error shown; the full text is in the row and `lightjobs failed`.
const ERROR_SHOWN: usize = 2_000;
/// Characters of a payload shown.
const PAYLOAD_SHOWN: usize = 500;
/// Flow keys at a limit shown, the longest waiting first.
const FLOW_SHOWN: usize = 50;
/// Batches shown, unfinished ones first.
const BATCHES_SHOWN: usize = 20;

/// Everything the page shows, read in one go.
pub(super) struct Snapshot {
    counts: Vec<QueueCount>,
    paused: Vec<String>,
    /// Flow keys at a limit.
    flow: Vec<crate::FlowKeyState>,
    failed: Vec<JobRecord>,
    /// The latest batches, unfinished ones first.
    batches: Vec<crate::BatchState>,
    /// Running, pending, scheduled, awaiting and processed jobs, in that order.
    recent: [(Status, Vec<JobRecord>); 5],
    /// The tag the job lists are filtered by.
    tag: Option<String>,
}

impl Snapshot {
    pub(super) async fn load(queue: &JobQueue, tag: Option<&str>) -> crate::Result<Snapshot> {
        let list = |status: Status, most: u64| async move {
            let page = queue.list_filtered(status.as_str(), None, tag, most, None);
            Ok::<_, crate::Error>(page.await?.jobs)
        };
        let recent = |status: Status| list(status, RECENT_SHOWN);
        let (
            (counts, paused, flow, batches),
            failed,
            running,
            pending,
            scheduled,
            awaiting,
            processed,
        ) = futures::try_join!(
            futures::future::try_join4(
                queue.stats(),
                queue.paused_queues(),
                queue.flow_keys(FLOW_SHOWN),
                queue.recent_batches(BATCHES_SHOWN)
            ),
            list(Status::Failed, FAILED_SHOWN),
            recent(Status::Running),
            recent(Status::Pending),
            recent(Status::Scheduled),
            recent(Status::Awaiting),
            recent(Status::Processed),
        )?;
        Ok(Snapshot {
            counts,
            paused,
            flow,
            failed,
            batches,
            recent: [
                (Status::Running, running),
                (Status::Pending, pending),
                (Status::Scheduled, scheduled),
                (Status::Awaiting, awaiting),
                (Status::Processed, processed),
            ],
            tag: tag.map(str::to_owned),
        })
    }
}

/// The text shown after an action, from the redirect's query.
pub(super) fn notice(outcome: &Outcome) -> Option<String> {
    let id = outcome.id.unwrap_or_default();
    let queue = outcome.queue.as_deref().unwrap_or_default();
    Some(match outcome.done.as_deref()? {
        "retried" => format!("Job {id} is pending again, with fresh attempts."),
        "discarded" => format!("Job {id} was deleted."),
        "cancelled" => format!(
            "Job {id} was cancelled (if it was running, its process stops it within about a second)."
        ),
        "unchanged" => format!("Job {id} was left as it is: it is no longer in that state."),
        "retried_all" => format!(
            "{} failed job(s) are pending again.",
            outcome.n.unwrap_or_default()
        ),
        "paused" => format!("Queue “{queue}” is paused: running jobs finish, no new ones start."),
        "resumed" => format!("Queue “{queue}” is running again."),
        _ => return None,
    })
}

/// HTML-escapes text for element content and quoted attribute values alike.
pub(super) struct Esc<'a>(pub(super) &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub(super) fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// `s` percent-encoded for a query string: tags lightjobs wrote need none, but a row
/// another program wrote may hold anything.
pub(super) fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.:-".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of the store's microsecond times.
pub(super) fn time(t: Option<&str>) -> &str {
    t.map_or("", |t| t.get(..19).unwrap_or(t))
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f6f7f9}
h1{font-size:1.4rem;margin:0 0 1rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:0;white-space:pre-wrap;word-break:break-word;max-height:12rem;overflow:auto;
font:12px/1.35 ui-monospace,monospace}
.err{color:#a4161a}.muted{color:#6b7280}.notice{background:#e7f5ea;border:1px solid #9ad1a8;
padding:.5rem .8rem;margin-bottom:1rem}
.badge{display:inline-block;padding:0 .4rem;border-radius:.6rem;font-size:12px}
.paused{background:#fde8c8;color:#8a4b00}.active{background:#dff3e4;color:#1e6b34}
.succeeded{background:#dff3e4;color:#1e6b34}.failed{background:#fbe0e0;color:#a4161a}
.running{background:#e0ecfb;color:#1d4f91}
form{display:inline;margin:0}button{font:inherit;font-size:13px;padding:.15rem .6rem;
border:1px solid #9aa3af;border-radius:4px;background:#fff;cursor:pointer}
button:hover{background:#eef0f3}button.danger{border-color:#d99;color:#a4161a}
details summary{cursor:pointer;color:#6b7280}
";

/// The whole page.
pub(super) fn render(s: &Snapshot, token: &str, notice: &Option<String>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write_page(&mut out, s, token, notice);
    out
}

/// The document's head, and the page's title as its heading.
pub(super) fn write_head(out: &mut String, title: &str) -> fmt::Result {
    write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t} · lightjobs</title><style>{STYLE}</style></head><body>\
         <h1>{t} <span class=\"muted\">· lightjobs</span></h1>",
        t = Esc(title)
    )
}

fn write_page(out: &mut String, s: &Snapshot, token: &str, notice: &Option<String>) -> fmt::Result {
    write_head(out, "Jobs")?;
    if let Some(text) = notice {
        write!(out, "<p class=\"notice\" role=\"status\">{}</p>", Esc(text))?;
    }
    write_queues(out, s, token)?;
    write_flow(out, &s.flow)?;
    write_tag_filter(out, s.tag.as_deref())?;
    write_batches(out, &s.batches)?;
    write_failed(out, s, token)?;
    for (status, jobs) in &s.recent {
        write_recent(out, *status, jobs, token)?;
    }
    out.write_str(
        "<p class=\"muted\">Times are UTC. Every button is also a command: \
         <code>lightjobs --help</code>.</p></body></html>",
    )
}

/// The flow keys at a limit: what waits on each, and why.
fn write_flow(out: &mut String, keys: &[crate::FlowKeyState]) -> fmt::Result {
    if keys.is_empty() {
        return Ok(());
    }
    out.write_str(
        "<h2>Waiting on flow limits</h2><table><thead><tr><th>Key</th>\
         <th class=\"n\">Running</th><th class=\"n\">Waiting</th><th>Limit</th></tr></thead><tbody>",
    )?;
    for k in keys {
        let mut limit = k
            .concurrency
            .map(|c| format!("{c} at once"))
            .unwrap_or_default();
        if let Some((n, per)) = k.rate {
            limit = format!("{limit} {n} per {per:?}");
        }
        if let Some(p) = k.paused_for {
            limit = format!("{limit} · paused {:.1}s (Retry-After)", p.as_secs_f64());
        }
        write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            Esc(&k.key),
            k.running,
            k.blocked,
            Esc(limit.trim())
        )?;
    }
    out.write_str("</tbody></table>")
}

/// The filter of the job lists by tag: a GET form, and what is filtered now.
fn write_tag_filter(out: &mut String, tag: Option<&str>) -> fmt::Result {
    write!(
        out,
        "<h2>Jobs</h2><form method=\"get\" id=\"tag-filter\">tag \
         <input name=\"tag\" value=\"{}\" size=\"24\"> <button>Filter</button></form>",
        Esc(tag.unwrap_or(""))
    )?;
    if let Some(tag) = tag {
        write!(
            out,
            " <span class=\"muted\">only jobs tagged <b>{}</b> · <a href=\"?\">all jobs</a></span>",
            Esc(tag)
        )?;
    }
    Ok(())
}

/// The latest batches and their progress.
fn write_batches(out: &mut String, batches: &[crate::BatchState]) -> fmt::Result {
    if batches.is_empty() {
        return Ok(());
    }
    out.write_str(
        "<h2>Batches</h2><table id=\"batches\"><tr><th class=\"n\">id</th><th>description</th>\
         <th class=\"n\">done</th><th class=\"n\">running</th><th class=\"n\">failed</th>\
         <th>state</th><th>created</th><th>finished</th></tr>",
    )?;
    for b in batches {
        let state = b.outcome.map_or("running", |o| o.as_str());
        write!(
            out,
            "<tr id=\"batch-{id}\"><td class=\"n\">{id}</td><td>{}</td>\
             <td class=\"n\">{}/{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td><span class=\"badge {state}\">{state}</span></td><td>{}</td><td>{}</td></tr>",
            Esc(b.description.as_deref().unwrap_or("")),
            b.done(),
            b.total(),
            b.running,
            b.failed + b.cancelled,
            Esc(time(Some(&b.created_at))),
            Esc(time(b.finished_at.as_deref())),
            id = b.id,
        )?;
    }
    out.write_str("</table>")
}

/// A form posting `action` with the CSRF token and hidden `fields`, and its buttons.
pub(super) fn write_form(
    out: &mut String,
    token: &str,
    fields: &[(&str, &str)],
    buttons: &[(&str, &str, bool)],
) -> fmt::Result {
    write!(
        out,
        "<form method=\"post\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        Esc(token)
    )?;
    for (name, value) in fields {
        write!(
            out,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            Esc(value)
        )?;
    }
    for (action, label, danger) in buttons {
        let class = if *danger { " class=\"danger\"" } else { "" };
        write!(
            out,
            "<button type=\"submit\" name=\"action\" value=\"{action}\"{class}>{label}</button> "
        )?;
    }
    out.write_str("</form>")
}

fn write_queues(out: &mut String, s: &Snapshot, token: &str) -> fmt::Result {
    let mut per_queue: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for c in &s.counts {
        *per_queue
            .entry(&c.queue)
            .or_default()
            .entry(&c.status)
            .or_default() += c.count;
    }
    for q in &s.paused {
        per_queue.entry(q).or_default();
    }
    // Seed-era or future statuses get a column too rather than vanishing from the totals.
    let extra: BTreeSet<&str> = s
        .counts
        .iter()
        .map(|c| c.status.as_str())
        .filter(|st| !JOB_STATUSES.contains(st))
        .collect();
    let columns: Vec<&str> = JOB_STATUSES.iter().copied().chain(extra).collect();

    out.write_str("<h2>Queues</h2><table id=\"queues\"><tr><th>queue</th>")?;
    for col in &columns {
        write!(out, "<th class=\"n\">{}</th>", Esc(col))?;
    }
    out.write_str("<th>state</th><th></th></tr>")?;
    if per_queue.is_empty() {
        write!(
            out,
            "<tr><td colspan=\"{}\" class=\"muted\">No jobs yet.</td></tr>",
            columns.len() + 3
        )?;
    }
    for (queue, counts) in &per_queue {
        let paused = s.paused.iter().any(|p| p == queue);
        write!(out, "<tr><td>{}</td>", Esc(queue))?;
        for col in &columns {
            let n = counts.get(col).copied().unwrap_or(0);
            let class = if *col == "failed" && n > 0 {
                "n err"
            } else {
                "n"
            };
            write!(out, "<td class=\"{class}\">{n}</td>")?;
        }
        let (state, button) = if paused {
            ("paused", ("resume", "Resume", false))
        } else {
            ("active", ("pause", "Pause", true))
        };
        write!(
            out,
            "<td><span class=\"badge {state}\">{state}</span></td><td>"
        )?;
        write_form(out, token, &[("queue", queue)], &[button])?;
        out.write_str("</td></tr>")?;
    }
    out.write_str("</table>")
}

fn write_failed(out: &mut String, s: &Snapshot, token: &str) -> fmt::Result {
    let total: u64 = s
        .counts
        .iter()
        .filter(|c| c.status == "failed")
        .map(|c| c.count)
        .sum();
    write!(out, "<h2>Failed <span class=\"muted\">({total})</span> ")?;
    if total > 0 {
        write_form(out, token, &[], &[("retry_all", "Retry all failed", false)])?;
    }
    out.write_str("</h2>")?;
    if s.failed.is_empty() {
        return out.write_str("<p class=\"muted\">No failed jobs.</p>");
    }
    out.write_str(
        "<table id=\"failed\"><tr><th class=\"n\">id</th><th>job</th><th>queue</th>\
         <th class=\"n\">attempts</th><th>finished</th><th>error</th><th></th></tr>",
    )?;
    for job in &s.failed {
        write_job_cells(out, job)?;
        write!(
            out,
            "</td><td>{}</td><td class=\"n\">{}/{}</td><td>{}</td>\
             <td><pre class=\"err\">{}</pre></td><td>",
            Esc(&job.queue),
            job.attempts,
            job.max_attempts,
            Esc(time(job.finished_at.as_deref())),
            Esc(&cut(job.last_error.as_deref().unwrap_or(""), ERROR_SHOWN)),
        )?;
        write_form(
            out,
            token,
            &[("id", &job.id.to_string())],
            &[("retry", "Retry", false), ("discard", "Discard", true)],
        )?;
        out.write_str("</td></tr>")?;
    }
    out.write_str("</table>")
}

fn write_recent(out: &mut String, status: Status, jobs: &[JobRecord], token: &str) -> fmt::Result {
    let (title, when) = match status {
        Status::Running => ("Running", "started"),
        Status::Pending => ("Pending", "due"),
        Status::Scheduled => ("Scheduled", "due"),
        Status::Awaiting => ("Waiting for another job or batch", "waits for"),
        _ => ("Processed", "finished"),
    };
    write!(out, "<h2>{title}</h2>")?;
    if jobs.is_empty() {
        return write!(out, "<p class=\"muted\">No {status} jobs.</p>");
    }
    write!(
        out,
        "<table id=\"{status}\"><tr><th class=\"n\">id</th><th>job</th><th>queue</th>\
         <th class=\"n\">attempts</th><th>{when}</th><th>last error</th><th></th></tr>"
    )?;
    for job in jobs {
        let waits_for = match (job.after_job, job.after_batch) {
            (Some(id), _) => format!("job {id}"),
            (_, Some(id)) => format!("batch {id}"),
            _ => String::new(),
        };
        let at = match status {
            Status::Processed => job.finished_at.as_deref(),
            Status::Awaiting => Some(waits_for.as_str()),
            _ => Some(job.scheduled_at.as_str()),
        };
        write_job_cells(out, job)?;
        write!(
            out,
            "</td><td>{}</td><td class=\"n\">{}/{}</td><td>{}</td><td><pre class=\"{}\">{}</pre></td><td>",
            Esc(&job.queue),
            job.attempts,
            job.max_attempts,
            Esc(time(at)),
            // An error before a later success is history, not an alarm.
            if status == Status::Processed { "muted" } else { "err" },
            Esc(&cut(job.last_error.as_deref().unwrap_or(""), ERROR_SHOWN)),
        )?;
        if matches!(
            status,
            Status::Pending | Status::Scheduled | Status::Awaiting | Status::Running
        ) {
            write_form(
                out,
                token,
                &[("id", &job.id.to_string())],
                &[("cancel", "Cancel", true)],
            )?;
        }
        out.write_str("</td></tr>")?;
    }
    out.write_str("</table>")
}

/// Opens a job's row: its id, its name and its payload (folded).
fn write_job_cells(out: &mut String, job: &JobRecord) -> fmt::Result {
    write!(
        out,
        "<tr id=\"job-{id}\"><td class=\"n\"><a href=\"?job={id}\">{id}</a></td><td>{name}",
        id = job.id,
        name = Esc(&job.name)
    )?;
    write_payload(out, job)
}

fn write_payload(out: &mut String, job: &JobRecord) -> fmt::Result {
    if let Some(batch) = job.batch {
        write!(
            out,
            " <a class=\"muted\" href=\"#batch-{batch}\">batch {batch}</a>"
        )?;
    }
    for tag in &job.tags {
        write!(
            out,
            " <a class=\"muted\" href=\"?tag={}\">#{}</a>",
            query_value(tag),
            Esc(tag)
        )?;
    }
    write!(
        out,
        "<details><summary>payload</summary><pre>{}</pre>",
        Esc(&cut(&job.payload, PAYLOAD_SHOWN))
    )?;
    for (what, json) in [("metadata", &job.meta), ("output", &job.output)] {
        if let Some(json) = json {
            write!(out, "{what}<pre>{}</pre>", Esc(&cut(json, PAYLOAD_SHOWN)))?;
        }
    }
    out.write_str("</details>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            Esc("<script>alert('x\"&')</script>").to_string(),
            "&lt;script&gt;alert(&#39;x&quot;&amp;&#39;)&lt;/script&gt;"
        );
        assert_eq!(Esc("plain é").to_string(), "plain é");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("tenant:42"), "tenant:42");
        assert_eq!(query_value("a&b \"c\"#é"), "a%26b%20%22c%22%23%C3%A9");
    }

    #[test]
    fn cuts_on_characters() {
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
        assert_eq!(
            time(Some("2026-01-02 03:04:05.123456")),
            "2026-01-02 03:04:05"
        );
        assert_eq!(time(None), "");
    }
}
