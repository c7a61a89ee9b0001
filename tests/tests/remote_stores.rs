//! `gs://` and `az://` corpora go through the same code as `s3://`: a bucket of fake-gcs-server
//! and a container of Azurite (both installed from the package registries) stream what the
//! local files stream, and a two-source mixture over each resumes exactly after 6 cuts, the
//! segments alternating between two pipeline processes.

use flightlm_tests::object_servers::ObjectServer;
use flightlm_tests::remote_corpus::{consume, cut_and_resume, fixture, serve, stats};

/// The whole container streams what the local directory streams, then a mixture of two of its
/// objects is cut 6 times and resumed.
fn same_blocks_and_six_cuts(
    scheme: &str,
    name: &str,
    server: impl Fn(&std::path::Path) -> (ObjectServer, Vec<(String, String)>),
) {
    let fixture = fixture(name);
    let (_server, environment) = server(&fixture.local);
    let local = serve(&fixture, &["--input", fixture.local.to_str().unwrap()], &[]);
    let (expected, _) = consume(&local, &fixture.dir.join("local.jsonl"), None, None);
    let whole = serve(
        &fixture,
        &["--input", &format!("{scheme}://corpus")],
        &environment,
    );
    let (streamed, _) = consume(&whole, &fixture.dir.join("remote.jsonl"), None, None);
    assert!(expected.len() > 100, "{} blocks", expected.len());
    assert_eq!(
        streamed, expected,
        "{scheme}://corpus streams what the directory streams"
    );
    let counted = stats(&whole);
    assert_eq!(counted["remote"]["retries"], 0, "{counted}");

    let books = format!("books={scheme}://corpus/books.txt:0.6");
    let news = format!("news={scheme}://corpus/news.parquet:0.4");
    let arguments = [
        "--source",
        &books,
        "--source",
        &news,
        "--shuffle-window",
        "16",
    ];
    let pipelines = [
        serve(&fixture, &arguments, &environment),
        serve(&fixture, &arguments, &environment),
    ];
    let (_, cursor) = cut_and_resume(&fixture, &pipelines, 6);
    let named = cursor.map(|cursor| cursor.to_string()).unwrap_or_default();
    assert!(named.contains(&format!("{scheme}://corpus/")), "{named}");
}

#[test]
fn a_gcs_bucket_streams_what_local_files_stream_and_resumes_after_every_cut() {
    same_blocks_and_six_cuts("gs", "remote-gcs", |root| {
        let server = ObjectServer::gcs(root, "corpus");
        let environment = server.gcs_environment();
        (server, environment)
    });
}

#[test]
fn an_azure_container_streams_what_local_files_stream_and_resumes_after_every_cut() {
    same_blocks_and_six_cuts("az", "remote-azure", |root| {
        let server = ObjectServer::azure(root, "corpus");
        let environment = server.azure_environment();
        (server, environment)
    });
}
