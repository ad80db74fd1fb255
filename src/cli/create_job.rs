//! `create:job`: writes a job module from the template and wires it into its parent.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Valid Rust in itself (the tests compile it), with `JobName` and `job_name` replaced.
const TEMPLATE: &str = include_str!("job_template.rs");

/// What `create:job` wrote and what is left for the user to add by hand.
#[derive(Debug)]
pub struct Created {
    /// The new module's file.
    pub path: PathBuf,
    /// The module file that now declares it (`pub mod send_mail;`).
    pub declared_in: PathBuf,
    /// The line the crate root still needs (`mod jobs;`), when it lacks one.
    pub root_needs: Option<(PathBuf, String)>,
    /// The path to register with `Workers::register`.
    pub type_path: String,
}

/// Writes `dir/<snake_name>.rs` for the job type `name` (CamelCase) and declares it in
/// `dir/mod.rs` (or `dir.rs`). Refuses a name that is not a Rust type name, a file that
/// exists, and a `dir` that is not inside a Cargo project.
pub fn create_job(name: &str, dir: &Path) -> Result<Created> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(Error::invalid(
            "job name",
            format!("`{name}` should be a CamelCase Rust type name, like SendMail"),
        ));
    }
    let dir = std::path::absolute(dir)?;
    let project = dir
        .ancestors()
        .find(|d| d.join("Cargo.toml").is_file())
        .ok_or_else(|| {
            Error::invalid(
                "create:job",
                format!(
                    "{} is not inside a Cargo project (no Cargo.toml in it or above it); run \
                     create:job from your project, or pass --dir inside it",
                    dir.display()
                ),
            )
        })?
        .to_path_buf();
    let stem = snake_case(name);
    let path = dir.join(format!("{stem}.rs"));
    if path.exists() {
        return Err(Error::invalid(
            "create:job",
            format!("{} already exists; it was left as it is", path.display()),
        ));
    }
    std::fs::create_dir_all(&dir)?;
    let source = TEMPLATE.replace("JobName", name).replace("job_name", &stem);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?
        .write_all(source.as_bytes())?;

    let declared_in = module_file(&dir);
    declare(&declared_in, &format!("pub mod {stem};"))?;
    let module = dir
        .file_name()
        .and_then(|m| m.to_str())
        .unwrap_or("jobs")
        .to_owned();
    let root_needs = crate_root(&project, &dir).and_then(|root| {
        let line = format!("mod {module};");
        let text = std::fs::read_to_string(&root).unwrap_or_default();
        let declared = text.lines().any(|l| {
            let l = l.trim();
            l == line || l == format!("pub {line}") || l == format!("pub(crate) {line}")
        });
        (!declared).then_some((root, line))
    });
    Ok(Created {
        path,
        declared_in,
        root_needs,
        type_path: format!("{module}::{stem}::{name}"),
    })
}

/// `dir.rs` beside `dir` when the project uses that layout, else `dir/mod.rs`.
fn module_file(dir: &Path) -> PathBuf {
    let sibling = dir.with_extension("rs");
    if sibling.is_file() {
        sibling
    } else {
        dir.join("mod.rs")
    }
}

/// Appends `line` to `file` (creating it) unless it is there already.
fn declare(file: &Path, line: &str) -> Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    if text.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    if !text.is_empty() && !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    writeln!(out, "{line}")?;
    Ok(())
}

/// `src/main.rs` or `src/lib.rs` when `dir` sits directly in the project's `src`.
fn crate_root(project: &Path, dir: &Path) -> Option<PathBuf> {
    let src = project.join("src");
    if dir.parent() != Some(src.as_path()) {
        return None;
    }
    ["main.rs", "lib.rs"]
        .iter()
        .map(|f| src.join(f))
        .find(|f| f.is_file())
}

/// `SendMail` → `send_mail`, `HTTPRequest` → `http_request`, `Resize2XImage` →
/// `resize2_x_image`: a word starts at a capital after a lower-case letter or digit, or at
/// the last capital of a run that a lower-case letter follows.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names() {
        assert_eq!(snake_case("SendMail"), "send_mail");
        assert_eq!(snake_case("Resize2XImage"), "resize2_x_image");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("ParseURL"), "parse_url");
        assert_eq!(snake_case("A"), "a");
    }
}
