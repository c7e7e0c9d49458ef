//! A first run without a configured root secret: one is generated into a
//! private file beside the database, reused on the next start, never logged,
//! and a configured secret always wins. SQLite only: with PostgreSQL the file
//! would go to the working directory (`data/root-secret`).

use fhirbox_server::root_secret::{ensure_root_client, RootSecretSource};

use crate::helpers::{captured_logs, Backend, TestApp, ROOT_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_generates_a_private_root_secret_and_later_runs_reuse_it() {
    let first = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.root_client = None;
        assert!(matches!(
            ensure_root_client(s),
            RootSecretSource::Generated(_)
        ));
    })
    .await;
    let path = first
        .db
        .sqlite_path()
        .unwrap()
        .with_file_name("root-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the server's user may read the secret");
    }
    let secret = std::fs::read_to_string(&path)
        .unwrap()
        .trim_end()
        .to_owned();
    assert!(secret.len() >= 43);
    // The first run is usable: root works with the file's secret, and only with it.
    assert_eq!(
        first.get_as("/fhir/Patient", "root", &secret).await.status,
        200
    );
    assert_eq!(
        first
            .get_as("/fhir/Patient", "root", ROOT_SECRET)
            .await
            .status,
        401
    );

    // The next start on the same database reuses the file.
    let second = first
        .sibling(|s| {
            s.root_client = None;
            assert_eq!(
                ensure_root_client(s),
                RootSecretSource::Reused(path.clone())
            );
        })
        .await;
    assert_eq!(
        second.get_as("/fhir/Patient", "root", &secret).await.status,
        200
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim_end(), secret);

    // A configured secret wins over the file.
    let configured = first
        .sibling(|s| assert_eq!(ensure_root_client(s), RootSecretSource::Configured))
        .await;
    assert_eq!(
        configured
            .get_as("/fhir/Patient", "root", ROOT_SECRET)
            .await
            .status,
        200
    );
    assert_eq!(
        configured
            .get_as("/fhir/Patient", "root", &secret)
            .await
            .status,
        401
    );

    // The log says where the secret is and how to use it, never what it is.
    let logs = captured_logs();
    assert!(
        logs.contains(&path.display().to_string()),
        "the log names the file"
    );
    assert!(
        logs.contains("curl -u root:$(cat "),
        "the log shows how to use it"
    );
    assert!(!logs.contains(&secret), "the generated secret was logged");
}
