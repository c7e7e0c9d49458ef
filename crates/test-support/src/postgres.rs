//! A PostgreSQL database that exists for one test: created on the server named
//! by `FHIRBOX_TEST_POSTGRES_URL`, dropped (with any open connections) when the
//! value is dropped.

use sqlx::Connection;

use crate::POSTGRES_URL_VAR;

/// The administrative URL from `FHIRBOX_TEST_POSTGRES_URL`. A PostgreSQL
/// variant only runs when it is set or under CI (see `build.rs`), so a missing
/// URL here is a configuration error and fails the test with a clear message.
pub fn admin_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set; the PostgreSQL variants need it \
             (e.g. postgres://postgres@127.0.0.1:5432/postgres). Under CI they are \
             never skipped, so CI must set it."
        ),
    }
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `fhirbox_test_<random>` on the server of [`admin_url`].
    pub async fn create() -> TestDatabase {
        let admin_url = admin_url();
        let name = format!("fhirbox_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("{POSTGRES_URL_VAR} must point at a reachable PostgreSQL server: {e}")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("the test database is created");
        conn.close().await.ok();
        TestDatabase { admin_url, name }
    }

    /// The URL of this database (the admin URL with the database name replaced).
    pub fn url(&self) -> String {
        with_database(&self.admin_url, &self.name)
    }

    /// The database name, for tools such as `pg_dump`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside an async test; a short-lived runtime on a thread of its own does the DROP.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the DROP DATABASE");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    conn.close().await.ok();
                }
            });
        })
        .join();
    }
}

/// Replaces the database name in a PostgreSQL URL, keeping its query string.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t"),
            "postgres://u@h:5432/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t"), "postgres://u@h/t");
    }
}
