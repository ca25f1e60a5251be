//! The archive on an S3-compatible service, through `object_store` (the
//! `aws` feature), with the URL and credentials as a user gives them.
//!
//! Needs a service to talk to, so it runs only when `STRATA_TEST_S3_BUCKET`
//! names a bucket to create there, with `AWS_ENDPOINT` (plain HTTP), and
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP=true` set. `.ci/run` does so against moto's S3 server
//! (`pip install 'moto[server]'`, `moto_server -p 5123`):
//!
//! ```sh
//! STRATA_TEST_S3_BUCKET=strata-test AWS_ENDPOINT=http://127.0.0.1:5123 \
//!   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
//!   AWS_ALLOW_HTTP=true cargo test -p strata-archive --features aws --test s3
//! ```
#![cfg(feature = "aws")]

use std::io::{Read, Write};

use strata::{AggregateEvents, Durability, Event, ExpectedVersion, NewEvent, Options, Store};
use strata_archive::{Archiver, Manifest, RestoreOptions, restore, target};

/// Creates `bucket` on the service at `endpoint` (`http://host:port`):
/// object_store reads and writes objects but makes no buckets.
fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint
        .strip_prefix("http://")
        .expect("AWS_ENDPOINT is http://host:port");
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn an_archive_in_s3_restores_the_store() {
    let Ok(bucket) = std::env::var("STRATA_TEST_S3_BUCKET") else {
        eprintln!("skipped: set STRATA_TEST_S3_BUCKET and AWS_* (see the file's header)");
        return;
    };
    let endpoint = std::env::var("AWS_ENDPOINT").expect("AWS_ENDPOINT");
    create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes_max: 64 << 10,
        durability: Durability::Sync,
        ..Options::default()
    };
    let store = Store::open(dir.path().join("src"), options.clone()).unwrap();
    let url = format!("s3://{bucket}/servers/one/default");
    let target = target::open(&url).unwrap();
    let mut archiver = Archiver::new(store.clone(), target.clone()).unwrap();
    for round in 0..30u64 {
        let events = (0..1 + round % 9)
            .map(|i| {
                NewEvent::new(
                    "Happened",
                    format!(r#"{{"i":{i},"pad":"{}"}}"#, "y".repeat(1000)).into_bytes(),
                )
            })
            .collect();
        store
            .append_batch(&[AggregateEvents {
                aggregate_id: format!("a{}", round % 3),
                expected: ExpectedVersion::Any,
                events,
            }])
            .unwrap();
        archiver.step().unwrap();
    }
    let manifest = Manifest::load(&*target).unwrap().unwrap();
    assert_eq!(manifest.head, store.head());
    assert!(manifest.segments.iter().filter(|s| s.sealed).count() >= 1);

    let out = dir.path().join("restored");
    let report = restore(&*target, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(report.head, store.head());
    let restored = Store::open(&out, options).unwrap();
    let a: Vec<Event> = store.read_all(1).map(Result::unwrap).collect();
    let b: Vec<Event> = restored.read_all(1).map(Result::unwrap).collect();
    assert_eq!(a, b);
    restored.close().unwrap();
    store.close().unwrap();
}
