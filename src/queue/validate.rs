//! What a dispatch must satisfy before it reaches the database: names that fit their
//! columns, a payload under the limit, sane delays and attempts.

use super::*;

impl JobQueue {
    pub(super) fn validate(&self, job: NewJob) -> Result<NewJob> {
        validate_queue_name(&job.queue)?;
        crate::job::check_job_name(job.name)?;
        if job.payload.len() > self.inner.max_payload {
            return Err(Error::invalid(
                "payload",
                format!(
                    "job `{}` serialises to {} bytes, over the limit of {} bytes",
                    job.name,
                    job.payload.len(),
                    self.inner.max_payload
                ),
            ));
        }
        if let Some((key, period)) = &job.unique {
            if key.is_empty() || key.chars().count() > crate::defaults::MAX_UNIQUE_KEY_CHARS {
                return Err(Error::invalid(
                    "unique key",
                    format!("must be 1 to {MAX_UNIQUE_KEY_CHARS} characters"),
                ));
            }
            if *period > crate::defaults::MAX_DELAY {
                return Err(Error::invalid("unique period", "longer than ten years"));
            }
        }
        check_tags(&job.tags)?;
        if let Some(meta) = &job.meta {
            check_meta(meta)?;
        }
        if let Some(trace) = &job.trace {
            crate::trace::check(trace)?;
        }
        if let Some(flow) = &job.flow {
            flow.validate()?;
        }
        if job.max_attempts == 0 {
            return Err(Error::invalid("max_attempts", "must be at least 1"));
        }
        if let When::After(d) = job.when {
            if d > crate::defaults::MAX_DELAY {
                return Err(Error::invalid(
                    "delay",
                    format!("{d:?} is longer than the maximum of ten years"),
                ));
            }
        }
        Ok(job)
    }
}

/// Queue names are stored and compared as given, and always passed as parameters, so any
/// printable text is safe; empty, padded, control characters and overlong are refused.
pub(crate) fn validate_queue_name(queue: &str) -> Result<()> {
    let chars = queue.chars().count();
    if chars == 0 || chars > crate::defaults::MAX_QUEUE_NAME_CHARS {
        return Err(Error::invalid(
            "queue name",
            format!("must be 1 to {MAX_QUEUE_NAME_CHARS} characters, got {chars}"),
        ));
    }
    if queue.trim() != queue || queue.chars().any(char::is_control) {
        return Err(Error::invalid(
            "queue name",
            format!("{queue:?} has surrounding spaces or control characters"),
        ));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<()> {
    let (most, longest) = (crate::defaults::MAX_TAGS, crate::defaults::MAX_TAG_CHARS);
    if tags.len() > most {
        return Err(Error::invalid(
            "tags",
            format!("{} tags, at most {most}", tags.len()),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
    match tags
        .iter()
        .find(|t| t.is_empty() || t.len() > longest || !t.chars().all(allowed))
    {
        Some(bad) => Err(Error::invalid(
            "tag",
            format!("`{bad}` must be 1 to {longest} of A-Z a-z 0-9 _ . : -"),
        )),
        None => Ok(()),
    }
}

fn check_meta(meta: &str) -> Result<()> {
    let most = crate::defaults::MAX_META_BYTES;
    if !meta.starts_with('{') {
        return Err(Error::invalid("meta", "must be a JSON object"));
    }
    if meta.len() > most {
        return Err(Error::invalid(
            "meta",
            format!("{} bytes as JSON, at most {most}", meta.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(validate_queue_name("default").is_ok());
        assert!(validate_queue_name("it's; DROP TABLE jobs; --").is_ok());
        assert!(validate_queue_name("courriel-é-📬").is_ok());
        assert!(validate_queue_name(&"q".repeat(64)).is_ok());
        assert!(validate_queue_name(&"q".repeat(65)).is_err());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name(" mail").is_err());
        assert!(validate_queue_name("a\nb").is_err());
    }
}
