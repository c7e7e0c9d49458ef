//! The CRUD chain of Health Samurai's public FHIR benchmark: each virtual user
//! creates a Patient (POST), reads it, updates it (PUT) and deletes it, in
//! sequence, for the given duration. wrk cannot keep such per-user order, so
//! this small generator does. Prints one JSON line with requests/s, p50, p99
//! and the error count.
//!
//! Usage: crud-load FHIR-BASE-URL USERS SECONDS [AUTHORIZATION-HEADER]
//! (the FHIR base, e.g. http://127.0.0.1:8080/fhir)

use std::time::{Duration, Instant};

use serde_json::json;

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    chains: u64,
}

async fn user(
    client: reqwest::Client,
    base: String,
    auth: Option<String>,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let with_auth = |req: reqwest::RequestBuilder| match &auth {
        Some(a) => req.header("authorization", a),
        None => req,
    };
    let body = json!({"resourceType": "Patient", "name": [{"family": "Chain", "given": ["Crud"]}], "gender": "other"});
    while Instant::now() < until {
        let started = Instant::now();
        let created = with_auth(client.post(format!("{base}/Patient")))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await;
        tally
            .latencies_us
            .push(started.elapsed().as_micros() as u64);
        let id = match created {
            Ok(r) if r.status().as_u16() == 201 => match r.json::<serde_json::Value>().await {
                Ok(v) => v["id"].as_str().unwrap_or_default().to_owned(),
                Err(_) => String::new(),
            },
            _ => String::new(),
        };
        if id.is_empty() {
            tally.errors += 1;
            continue;
        }
        let url = format!("{base}/Patient/{id}");
        let mut updated = body.clone();
        updated["id"] = json!(id);
        updated["gender"] = json!("unknown");
        let steps = [
            (with_auth(client.get(&url)), 200),
            (
                with_auth(client.put(&url))
                    .header("content-type", "application/fhir+json")
                    .body(updated.to_string()),
                200,
            ),
            (with_auth(client.delete(&url)), 204),
        ];
        for (request, expected) in steps {
            let started = Instant::now();
            let ok = match request.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status == expected || (expected == 204 && status == 200)
                }
                Err(_) => false,
            };
            tally
                .latencies_us
                .push(started.elapsed().as_micros() as u64);
            if !ok {
                tally.errors += 1;
            }
        }
        tally.chains += 1;
    }
    tally
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: crud-load FHIR-BASE-URL USERS SECONDS [AUTHORIZATION-HEADER]");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let users: usize = args[2].parse().expect("USERS is a number");
    let seconds: f64 = args[3].parse().expect("SECONDS is a number");
    let auth = args.get(4).cloned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(users)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..users)
        .map(|_| tokio::spawn(user(client.clone(), base.clone(), auth.clone(), until)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("user task");
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        all.chains += t.chains;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, all.latencies_us.len())
            - 1;
        all.latencies_us[i] as f64 / 1000.0
    };
    println!(
        "{}",
        json!({
            "requests": all.latencies_us.len(),
            "rps": all.latencies_us.len() as f64 / elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "errors": all.errors,
            "chains": all.chains,
        })
    );
}
