//! The benchmark baseline: fhirbox's own router and handlers with the
//! authentication layer left out, configured from the same BOX_* variables.
//! Authenticated throughput is reported as a ratio of this server's.

use fhirbox_server::settings::{ProcessEnv, Settings};

#[tokio::main]
async fn main() {
    let settings = Settings::from_env(&ProcessEnv).expect("valid BOX_* settings");
    let port = settings.port;
    let app = fhirbox_server::app::build_app_without_auth_for_benchmarks(settings)
        .await
        .expect("the baseline app builds");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("port is free");
    eprintln!("baseline (no auth) listening on 127.0.0.1:{port}");
    fhirbox_server::serve(listener, app, fhirbox_server::app::shutdown_signal())
        .await
        .expect("serves");
}
