//! Archives in S3-compatible object storage: a real S3 server (moto's,
//! installed by test.sh) on a free loopback port, started and stopped by
//! the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tarn_core::Value;
use tarn_store::{Db, StoreOptions};

use crate::support::{get, options, set};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_s3() -> Server {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start moto_server ({e}); ./test.sh installs it with pip install 'moto[server]'"));
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a port: no event to wait on
    }
    server
}

/// Creates a bucket with a plain HTTP PUT (moto does not check signatures).
fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
}

#[test]
fn archives_round_trip_through_s3() {
    let server = start_s3();
    create_bucket(server.port, "tarn-test");
    let s3 = StoreOptions {
        archive_url: Some("s3://tarn-test/db1".into()),
        archive_options: vec![
            (
                "aws_endpoint".into(),
                format!("http://127.0.0.1:{}", server.port),
            ),
            ("allow_http".into(), "true".into()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_access_key_id".into(), "test".into()),
            ("aws_secret_access_key".into(), "test".into()),
        ],
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let t;
    {
        let db = Db::open(dir.path(), s3.clone()).unwrap();
        for i in 0..800 {
            set(&db, &format!("k/{}", i % 13), i);
        }
        t = set(&db, "marker", 1).time;
        assert!(db.archive_now().unwrap() >= 2);
        set(&db, "after", 2);
        db.close().unwrap();
    }
    assert!(
        !dir.path().join("archive").exists(),
        "archives went to S3, not the data dir"
    );
    let db = Db::open(dir.path(), s3).unwrap();
    assert!(db.recovery().archived_versions > 0);
    assert_eq!(get(&db, "k/5"), Some(Value::Int(798)));
    assert_eq!(get(&db, "after"), Some(Value::Int(2)));
    assert_eq!(
        db.get_at(&crate::support::p("marker"), t).unwrap().value,
        Some(Value::Int(1))
    );
}
