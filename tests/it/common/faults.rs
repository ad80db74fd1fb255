//! Faults injected by the server itself: triggers on `jobs` that `SIGNAL` a chosen error
//! for chosen status transitions, with a chosen probability, during a chosen time window.
//!
//! The statement lightjobs sends really fails on the real server, with the error code a
//! failover (1290 read-only, 1047 non-primary node), a deadlock (1213) or a lock timeout
//! (1205) would give; nothing in the crate is mocked or told about it. Each firing is
//! logged in a MyISAM table, which the statement's rollback does not undo, so a test can
//! show that its fault really happened.

use std::time::Duration;

use mysql_async::prelude::*;

use super::TestDb;

/// Which writes a rule fails.
#[derive(Debug, Clone, Copy)]
pub enum On {
    /// An UPDATE that moves a row from `from` to `to` (`None`: any status).
    Update {
        from: Option<&'static str>,
        to: Option<&'static str>,
    },
    /// An INSERT of a row with this status (`running`: a local handoff).
    Insert { status: &'static str },
}

/// One fault: `errno` for the writes `on`, with `probability`, for `window` from now.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub on: On,
    pub errno: u16,
    pub probability: f64,
    pub window: Duration,
}

impl Fault {
    /// Every UPDATE from `from` to `to` fails with `errno` for `window`.
    pub fn update(from: &'static str, to: &'static str, errno: u16, window: Duration) -> Fault {
        Fault {
            on: On::Update {
                from: Some(from),
                to: Some(to),
            },
            errno,
            probability: 1.0,
            window,
        }
    }

    pub fn probability(mut self, p: f64) -> Fault {
        self.probability = p;
        self
    }
}

/// Installs the rule tables and the triggers (once per test database).
pub async fn install(db: &TestDb) {
    let mut conn = db.pool.get_conn().await.unwrap();
    for sql in [
        "CREATE TABLE fault_rules (
            id INT AUTO_INCREMENT PRIMARY KEY,
            on_insert TINYINT NOT NULL,
            from_status VARCHAR(20) NULL,
            to_status VARCHAR(20) NULL,
            errno INT NOT NULL,
            probability DOUBLE NOT NULL,
            active_from DATETIME(6) NOT NULL,
            active_until DATETIME(6) NOT NULL
        ) ENGINE=InnoDB",
        "CREATE TABLE fault_log (
            id BIGINT AUTO_INCREMENT PRIMARY KEY,
            rule_id INT NOT NULL,
            job_id BIGINT NULL,
            at DATETIME(6) NOT NULL
        ) ENGINE=MyISAM",
        "CREATE TRIGGER fault_on_update BEFORE UPDATE ON jobs FOR EACH ROW
         BEGIN
            DECLARE rule INT DEFAULT NULL;
            DECLARE code INT DEFAULT NULL;
            SET rule = (SELECT id FROM fault_rules WHERE on_insert = 0
                AND (from_status IS NULL OR from_status = OLD.status)
                AND (to_status IS NULL OR to_status = NEW.status)
                AND UTC_TIMESTAMP(6) BETWEEN active_from AND active_until
                AND RAND() < probability ORDER BY id LIMIT 1);
            IF rule IS NOT NULL THEN
                SET code = (SELECT errno FROM fault_rules WHERE id = rule);
                INSERT INTO fault_log (rule_id, job_id, at) VALUES (rule, OLD.id, UTC_TIMESTAMP(6));
                SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = code,
                    MESSAGE_TEXT = 'lightjobs test: fault injected by a trigger';
            END IF;
         END",
        "CREATE TRIGGER fault_on_insert BEFORE INSERT ON jobs FOR EACH ROW
         BEGIN
            DECLARE rule INT DEFAULT NULL;
            DECLARE code INT DEFAULT NULL;
            SET rule = (SELECT id FROM fault_rules WHERE on_insert = 1
                AND to_status = NEW.status
                AND UTC_TIMESTAMP(6) BETWEEN active_from AND active_until
                AND RAND() < probability ORDER BY id LIMIT 1);
            IF rule IS NOT NULL THEN
                SET code = (SELECT errno FROM fault_rules WHERE id = rule);
                INSERT INTO fault_log (rule_id, job_id, at) VALUES (rule, NULL, UTC_TIMESTAMP(6));
                SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = code,
                    MESSAGE_TEXT = 'lightjobs test: fault injected by a trigger';
            END IF;
         END",
    ] {
        conn.query_drop(sql).await.unwrap();
    }
}

/// Arms `fault` from now on; returns the rule's id.
pub async fn inject(db: &TestDb, fault: Fault) -> u64 {
    let mut conn = db.pool.get_conn().await.unwrap();
    let (on_insert, from, to) = match fault.on {
        On::Update { from, to } => (0, from, to),
        On::Insert { status } => (1, None, Some(status)),
    };
    conn.exec_drop(
        "INSERT INTO fault_rules (on_insert, from_status, to_status, errno, probability, \
         active_from, active_until) VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6), \
         UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)",
        (
            on_insert,
            from,
            to,
            fault.errno,
            fault.probability,
            fault.window.as_micros() as u64,
        ),
    )
    .await
    .unwrap();
    conn.last_insert_id().unwrap()
}

/// Ends every rule at once.
pub async fn clear(db: &TestDb) {
    db.exec("UPDATE fault_rules SET active_until = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
        .await;
}

/// How many statements rule `rule` failed.
pub async fn fired(db: &TestDb, rule: u64) -> u64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM fault_log WHERE rule_id = {rule}"
    ))
    .await
}

/// Waits until the rule's window is over.
pub async fn wait_out(db: &TestDb, rule: u64) {
    loop {
        let left: i64 = db
            .scalar(&format!(
                "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), active_until) \
                 FROM fault_rules WHERE id = {rule}"
            ))
            .await;
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_micros(left as u64).min(Duration::from_millis(200)))
            .await;
    }
}
