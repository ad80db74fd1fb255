//! The `job` span of every run. A file of its own: a thread-local subscriber in a test
//! binary whose other tests run without one can see span callsites already cached as
//! uninteresting.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Drain, Flaky, Record, TestDb};
use lightjobs::Workers;

/// Every run is a `job` span carrying id, name, queue, attempt, outcome and duration.
#[actix_rt::test]
async fn each_run_is_a_tracing_span_with_its_outcome() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::FmtSpan;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::new("worker_spans").await;
    let queue = db.migrated().await;
    let ok = queue
        .dispatch(Record {
            tag: "traced".into(),
        })
        .await
        .unwrap();
    let bad = queue
        .dispatch(Flaky {
            message: "nope".into(),
            succeed_on: 9,
            permanent: true,
        })
        .await
        .unwrap();
    Workers::new(queue.clone())
        .register::<Record>()
        .register::<Flaky>()
        .data(db.pool.clone())
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .drain()
        .await;
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let closed = |id: u64| {
        log.lines()
            .find(|l| l.contains("close") && l.contains(&format!("job{{id={id} ")))
            .unwrap_or_else(|| panic!("no closed span for job {id} in:\n{log}"))
            .to_owned()
    };
    let line = closed(ok);
    for field in [
        "name=record",
        "queue=default",
        "attempt=1",
        "outcome=\"processed\"",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(closed(bad).contains("outcome=\"failed\""));
    db.drop_db().await;
}
