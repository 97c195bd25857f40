//! The Prometheus side of the observer (I/O shell): one instant query per signal, evaluated at
//! a given time, each failing on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as PromError};
use tracing::{Instrument, debug, debug_span, info_span, warn};

use appserver_core::desired::CONTAINER;
use appserver_core::observation::promql::{self, Signal, Values};
use appserver_core::observation::{
    Observed, PodEvents, SignalIssue, Target, assemble, pod_events, pod_names,
};

use super::ObserveError;
use crate::error_chain;

/// How long one query may take, end to end, before its signal is given up.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads signals from Prometheus; keeps one HTTP client (and its connection pool) per URL.
pub struct Observer {
    clients: Mutex<HashMap<String, Client>>,
    query_timeout: Duration,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

/// Why one query gave no number.
enum Failure {
    /// Prometheus' API did not answer: counts towards "unreachable".
    NoAnswer(String),
    /// It answered, but not with one number.
    Unusable(String),
}

impl Observer {
    pub fn new() -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            query_timeout: DEFAULT_QUERY_TIMEOUT,
        }
    }

    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The signals of `target` over the `window` that ends at `at` (instant queries evaluated
    /// at `at`, so a past window can be re-read). Pod status counts from `at - window`.
    ///
    /// Errors only when the Prometheus URL is invalid or no query got an API answer; every
    /// other failure is a `None` signal with a [`SignalIssue`].
    pub async fn observe(
        &self,
        target: &Target,
        window: Duration,
        at: Timestamp,
    ) -> Result<Observed, ObserveError> {
        let span = info_span!(
            "observe",
            appserver = %format!("{}/{}", target.namespace, target.name),
            prometheus = %target.prometheus_url,
            window = %promql::duration(window),
        );
        self.observe_inner(target, window, at)
            .instrument(span)
            .await
    }

    async fn observe_inner(
        &self,
        target: &Target,
        window: Duration,
        at: Timestamp,
    ) -> Result<Observed, ObserveError> {
        let url = target.prometheus_url.as_str();
        let names = pod_names(&target.pods);
        let events = pod_events(
            &target.pods,
            at.checked_sub(window).unwrap_or(Timestamp::MIN),
        );
        if names.is_empty() {
            return Ok(nothing_to_observe(window, events));
        }
        warn_unknown_keys(&target.queries);
        let client = self.client(url)?;
        let values = Values {
            namespace: &target.namespace,
            name: &target.name,
            pods: &names,
            container: CONTAINER,
            window,
        };
        let reads = Signal::ALL.map(|signal| {
            let (query, overridden) = promql::query_for(signal, &target.queries, &values);
            self.read(&client, url, query, overridden, at)
                .instrument(debug_span!("signal", %signal))
        });
        let results: Vec<(Signal, Result<f64, Failure>)> =
            Signal::ALL.into_iter().zip(join_all(reads).await).collect();
        unreachable_if_no_answer(url, &results)?;
        let (readings, issues) = split(results);
        let observation = assemble(window, names.len() as u32, &readings, events);
        debug!(?observation, issues = issues.len(), "observed");
        Ok(Observed {
            observation,
            issues,
        })
    }

    fn client(&self, url: &str) -> Result<Client, ObserveError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        // reqwest's rustls has no crypto provider of its own here (see Cargo.toml): make sure
        // the process has one, also when the library is used without our main().
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(url).map_err(|e| ObserveError::InvalidUrl {
            url: url.to_string(),
            detail: error_chain(&e),
        })?;
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    async fn read(
        &self,
        client: &Client,
        url: &str,
        query: String,
        overridden: bool,
        at: Timestamp,
    ) -> Result<f64, Failure> {
        let result = self
            .send(client, url, &query, at)
            .await
            .map_err(|f| with_origin(f, overridden));
        match &result {
            Ok(value) => debug!(%query, overridden, value, "read"),
            Err(Failure::NoAnswer(m) | Failure::Unusable(m)) => {
                debug!(%query, overridden, reason = %m, "no value")
            }
        }
        result
    }

    async fn send(
        &self,
        client: &Client,
        url: &str,
        query: &str,
        at: Timestamp,
    ) -> Result<f64, Failure> {
        let request = client
            .query(query)
            .query("time", eval_time(at))
            .timeout(self.query_timeout.as_millis() as i64)
            .post(); // POST: the pod alternation can outgrow a URL
        match tokio::time::timeout(self.query_timeout, request).await {
            Err(_) => Err(Failure::NoAnswer(format!(
                "no answer from {url} within {:?}",
                self.query_timeout
            ))),
            Ok(Err(e)) => Err(classify(url, &e)),
            Ok(Ok(response)) => {
                single_value(response.data()).map_err(|n| Failure::Unusable(n.describe(url)))
            }
        }
    }
}

/// All signals are missing when there is no pod: the regex of no pod would match series
/// without a pod label, so nothing is queried.
fn nothing_to_observe(window: Duration, events: PodEvents) -> Observed {
    let issues = Signal::ALL
        .into_iter()
        .map(|signal| SignalIssue {
            signal,
            message: "no scheduled pod to observe".to_string(),
        })
        .collect();
    Observed {
        observation: assemble(window, 0, &BTreeMap::new(), events),
        issues,
    }
}

fn warn_unknown_keys(queries: &BTreeMap<String, String>) {
    for key in queries.keys().filter(|k| Signal::from_key(k).is_none()) {
        warn!(key, "ignoring a query override for an unknown signal");
    }
}

/// Prometheus answers every API request, errors included, with JSON; anything else (refused
/// connection, timeout, an HTML page) means the API was not reached.
fn classify(url: &str, error: &PromError) -> Failure {
    match error {
        PromError::Prometheus(e) => Failure::Unusable(format!("query failed at {url}: {e}")),
        other => Failure::NoAnswer(format!("no answer from {url}: {}", error_chain(other))),
    }
}

fn with_origin(failure: Failure, overridden: bool) -> Failure {
    if !overridden {
        return failure;
    }
    let note = |m: String| format!("{m} (query from spec.tuning.metrics.queries)");
    match failure {
        Failure::NoAnswer(m) => Failure::NoAnswer(note(m)),
        Failure::Unusable(m) => Failure::Unusable(note(m)),
    }
}

/// `Unreachable` when not one query got an API answer.
fn unreachable_if_no_answer(
    url: &str,
    results: &[(Signal, Result<f64, Failure>)],
) -> Result<(), ObserveError> {
    let mut first = None;
    for (_, result) in results {
        match result {
            Err(Failure::NoAnswer(m)) => first = first.or(Some(m)),
            _ => return Ok(()),
        }
    }
    match first {
        Some(detail) => Err(ObserveError::Unreachable {
            url: url.to_string(),
            detail: detail.clone(),
        }),
        None => Ok(()),
    }
}

fn split(
    results: Vec<(Signal, Result<f64, Failure>)>,
) -> (BTreeMap<Signal, f64>, Vec<SignalIssue>) {
    let mut readings = BTreeMap::new();
    let mut issues = Vec::new();
    for (signal, result) in results {
        match result {
            Ok(value) => {
                readings.insert(signal, value);
            }
            Err(Failure::NoAnswer(message) | Failure::Unusable(message)) => {
                issues.push(SignalIssue { signal, message })
            }
        }
    }
    (readings, issues)
}

/// Why an answer is not one number.
#[derive(Debug, PartialEq)]
pub(crate) enum NotOne {
    /// Nothing to read: no series matched, or the arithmetic had nothing to work on.
    NoData(String),
    /// An answer of the wrong shape: the query breaks the one-number contract.
    Shape(String),
}

impl NotOne {
    fn describe(self, url: &str) -> String {
        match self {
            NotOne::NoData(d) => format!("no data from {url}: {d}"),
            NotOne::Shape(d) => format!("unusable answer from {url}: {d}"),
        }
    }
}

/// The one number a signal query must return (pure).
pub(crate) fn single_value(data: &Data) -> Result<f64, NotOne> {
    let value = match data {
        Data::Scalar(sample) => sample.value(),
        Data::Vector(v) if v.is_empty() => {
            return Err(NotOne::NoData("query returned an empty vector".into()));
        }
        Data::Vector(v) if v.len() == 1 => v[0].sample().value(),
        Data::Vector(v) => {
            return Err(NotOne::Shape(format!(
                "query returned {} series, not one number (aggregate it, e.g. avg(...))",
                v.len()
            )));
        }
        Data::Matrix(_) => {
            return Err(NotOne::Shape(
                "query returned a range vector, not one number".into(),
            ));
        }
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(NotOne::NoData(format!(
            "query returned {value} (e.g. no requests in the window)"
        )))
    }
}

/// Evaluation time for the API: Unix seconds with milliseconds.
fn eval_time(at: Timestamp) -> String {
    let ms = at.as_millisecond();
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(json: serde_json::Value) -> Data {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn one_element_vector_and_scalar_are_one_number() {
        let v = data(serde_json::json!({"resultType": "vector",
            "result": [{"metric": {}, "value": [1.0, "7"]}]}));
        assert_eq!(single_value(&v), Ok(7.0));
        let s = data(serde_json::json!({"resultType": "scalar", "result": [1.0, "0.5"]}));
        assert_eq!(single_value(&s), Ok(0.5));
    }

    #[test]
    fn empty_nan_and_many_are_not() {
        let empty = data(serde_json::json!({"resultType": "vector", "result": []}));
        assert_eq!(
            single_value(&empty).unwrap_err().describe("http://p"),
            "no data from http://p: query returned an empty vector"
        );
        let nan = data(serde_json::json!({"resultType": "vector",
            "result": [{"metric": {}, "value": [1.0, "NaN"]}]}));
        assert!(matches!(single_value(&nan), Err(NotOne::NoData(d)) if d.contains("NaN")));
        let two = data(serde_json::json!({"resultType": "vector", "result": [
            {"metric": {"pod": "a"}, "value": [1.0, "1"]},
            {"metric": {"pod": "b"}, "value": [1.0, "2"]}]}));
        assert!(matches!(single_value(&two), Err(NotOne::Shape(d)) if d.contains("2 series")));
    }

    #[test]
    fn eval_time_keeps_milliseconds() {
        let at: Timestamp = "2025-01-01T00:00:00.25Z".parse().unwrap();
        assert_eq!(eval_time(at), "1735689600.250");
    }

    #[test]
    fn unreachable_only_when_no_query_was_answered() {
        let no = || Err(Failure::NoAnswer("no answer from u: refused".into()));
        let all_down = vec![(Signal::Cpu, no()), (Signal::Memory, no())];
        let err = unreachable_if_no_answer("http://u", &all_down).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus at http://u cannot be reached: no answer from u: refused"
        );
        let partly = vec![(Signal::Cpu, no()), (Signal::Memory, Ok(1.0))];
        assert!(unreachable_if_no_answer("http://u", &partly).is_ok());
        let answered = vec![(Signal::Cpu, Err(Failure::Unusable("bad".into())))];
        assert!(unreachable_if_no_answer("http://u", &answered).is_ok());
    }

    #[test]
    fn invalid_url_is_an_error_naming_it() {
        let Err(err) = Observer::new().client("not a url") else {
            panic!("an invalid URL was accepted")
        };
        assert!(err.to_string().contains("\"not a url\""), "{err}");
    }

    #[test]
    fn clients_are_cached_per_url() {
        let observer = Observer::new();
        observer.client("http://a:9090").unwrap();
        observer.client("http://a:9090").unwrap();
        observer.client("http://b:9090").unwrap();
        assert_eq!(observer.clients.lock().unwrap().len(), 2);
    }
}
