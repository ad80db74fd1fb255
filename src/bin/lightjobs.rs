//! The commands that need no job types: `migrate`, `failed`, `retry`, `prune`, `stats`,
//! `create:job`. `process:jobs` runs from your own binary (see `lightjobs::cli`).

fn main() -> std::process::ExitCode {
    lightjobs::cli::run(lightjobs::Registry::new())
}
