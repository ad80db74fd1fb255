//! The page of one job (`?job=ID`): every column of its row in full, what it belongs to
//! and waits for, and the buttons its status allows.

use std::fmt::{self, Write as _};

use super::page::{query_value, time, write_form, write_head, Esc};
use crate::store::{JobRecord, Status};

/// Characters of a payload, an error, metadata or an output shown on the job's page.
const SHOWN: usize = 64 * 1024;

/// The page of job `id`, or a page that says there is none.
pub(super) fn render(
    job: Option<&JobRecord>,
    id: u64,
    token: &str,
    notice: &Option<String>,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = write_page(&mut out, job, id, token, notice);
    out
}

fn write_page(
    out: &mut String,
    job: Option<&JobRecord>,
    id: u64,
    token: &str,
    notice: &Option<String>,
) -> fmt::Result {
    write_head(out, &format!("Job {id}"))?;
    out.write_str("<p><a href=\"?\">← all jobs</a></p>")?;
    if let Some(text) = notice {
        write!(out, "<p class=\"notice\" role=\"status\">{}</p>", Esc(text))?;
    }
    let Some(job) = job else {
        write!(
            out,
            "<p class=\"muted\" id=\"no-job\">No job {id}: it never existed, or it was \
             pruned or deleted.</p></body></html>"
        )?;
        return Ok(());
    };
    write_fields(out, job)?;
    write_actions(out, job, token)?;
    write_errors(out, job)?;
    for (title, text, class) in [
        ("Last error", job.last_error.as_deref(), "err"),
        ("Payload", Some(job.payload.as_str()), ""),
        ("Metadata", job.meta.as_deref(), ""),
        ("Output", job.output.as_deref(), ""),
    ] {
        if let Some(text) = text {
            write!(
                out,
                "<h2>{title}</h2><pre class=\"{class}\" id=\"{}\">{}</pre>",
                title.to_ascii_lowercase().replace(' ', "-"),
                Esc(&super::page::cut(text, SHOWN))
            )?;
        }
    }
    out.write_str("</body></html>")
}

/// The row's columns, one table row each.
fn write_fields(out: &mut String, job: &JobRecord) -> fmt::Result {
    out.write_str("<table id=\"job\">")?;
    let status = format!("<span class=\"badge {s}\">{s}</span>", s = Esc(&job.status));
    let rows: [(&str, String); 7] = [
        ("name", Esc(&job.name).to_string()),
        ("queue", Esc(&job.queue).to_string()),
        ("status", status),
        (
            "attempts",
            format!("{} of {}", job.attempts, job.max_attempts),
        ),
        ("created", Esc(time(Some(&job.created_at))).to_string()),
        ("due", Esc(time(Some(&job.scheduled_at))).to_string()),
        (
            "finished",
            Esc(time(job.finished_at.as_deref())).to_string(),
        ),
    ];
    for (name, value) in rows {
        write!(out, "<tr><th>{name}</th><td>{value}</td></tr>")?;
    }
    if let Some(batch) = job.batch {
        write!(
            out,
            "<tr><th>batch</th><td><a href=\"?#batch-{batch}\">batch {batch}</a></td></tr>"
        )?;
    }
    match (job.after_job, job.after_batch) {
        (Some(up), _) => write!(
            out,
            "<tr><th>waits for</th><td><a href=\"?job={up}\">job {up}</a></td></tr>"
        )?,
        (_, Some(up)) => write!(
            out,
            "<tr><th>waits for</th><td><a href=\"?#batch-{up}\">batch {up}</a></td></tr>"
        )?,
        _ => {}
    }
    if !job.tags.is_empty() {
        out.write_str("<tr><th>tags</th><td>")?;
        for tag in &job.tags {
            write!(
                out,
                "<a href=\"?tag={}\">#{}</a> ",
                query_value(tag),
                Esc(tag)
            )?;
        }
        out.write_str("</td></tr>")?;
    }
    out.write_str("</table>")
}

/// The errors of its failed attempts, newest first.
fn write_errors(out: &mut String, job: &JobRecord) -> fmt::Result {
    if job.errors.is_empty() {
        return Ok(());
    }
    out.write_str(
        "<h2>Failed attempts</h2><table id=\"errors\"><tr><th class=\"n\">attempt</th>\
         <th>failed</th><th>error</th></tr>",
    )?;
    for e in job.errors.iter().rev() {
        write!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td><pre class=\"err\">{}</pre></td></tr>",
            e.attempt,
            Esc(time(Some(&e.at))),
            Esc(&e.error)
        )?;
    }
    out.write_str("</table>")
}

/// The buttons the job's status allows.
fn write_actions(out: &mut String, job: &JobRecord, token: &str) -> fmt::Result {
    let id = job.id.to_string();
    let buttons: &[(&str, &str, bool)] = match Status::parse(&job.status) {
        Some(Status::Failed) => &[("retry", "Retry", false), ("discard", "Discard", true)],
        Some(s) if !s.is_finished() => &[("cancel", "Cancel", true)],
        _ => return Ok(()),
    };
    out.write_str("<p id=\"actions\">")?;
    write_form(out, token, &[("id", &id)], buttons)?;
    out.write_str("</p>")
}
