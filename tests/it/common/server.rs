//! A private MariaDB server (own datadir, port and socket in a temp dir) for tests that
//! stop, kill or restart the database, so the shared server is never disturbed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateServer {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(bin: &str, fallback: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    fallback.to_owned()
}

impl PrivateServer {
    /// Initialises a datadir and starts `mariadbd` on a free port.
    pub fn start(name: &str) -> PrivateServer {
        let dir = std::env::temp_dir().join(format!("lightjobs-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(find("mariadb-install-db", "mysql_install_db"))
            .args([
                "--no-defaults",
                &format!("--datadir={}", dir.join("data").display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db runs (install mariadb-server)");
        assert!(status.success(), "mariadb-install-db failed");
        let mut server = PrivateServer {
            dir,
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(find("mariadbd", "mysqld"))
            .args([
                "--no-defaults".to_owned(),
                format!("--datadir={}", self.dir.join("data").display()),
                format!("--socket={}", self.dir.join("sock").display()),
                format!("--pid-file={}", self.dir.join("pid").display()),
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".to_owned(),
                "--user=root".to_owned(),
                "--skip-log-bin".to_owned(),
                "--innodb-buffer-pool-size=64M".to_owned(),
                "--max-connections=500".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("err.log")).unwrap())
            .spawn()
            .expect("mariadbd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private mariadbd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server as a shutdown or crash would: SIGTERM (clean) or SIGKILL.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`stop`](Self::stop), on the same datadir and port.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.stop("-TERM");
        self.spawn();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop("-KILL");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
