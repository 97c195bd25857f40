//! Reconciler against a mocked API server in process: what is sent, in what order, and what
//! the reconcile returns. The real API server is exercised by the end-to-end suite.

use std::sync::Arc;
use std::time::Duration;

use appserver_core::api::AppServer;
use appserver_operator::controller::{Context, Error, backoff_delay, error_policy, reconcile};
use appserver_operator::telemetry::Metrics;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (nodes, _writer) = reflector::store::<Node>();
    (
        Arc::new(Context::new(client, nodes, Arc::new(Metrics::default()))),
        handle,
    )
}

fn appserver(spec: Value, status: Option<Value>) -> Arc<DeserializeGuard<AppServer>> {
    let mut obj = json!({
        "apiVersion": "appserver.dev/v1alpha1", "kind": "AppServer",
        "metadata": {"name": "api", "namespace": "shop", "uid": "u-1", "generation": 2},
        "spec": spec,
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    Arc::new(DeserializeGuard(Ok(serde_json::from_value(obj).unwrap())))
}

fn gunicorn(limits: Value) -> Value {
    json!({"image": "registry.example/api:1", "args": ["app:app"], "replicas": 2,
           "server": {"kind": "gunicorn", "workerClass": "gthread"}, "resources": {"limits": limits}})
}

/// Receives the next request, checks its method and path, answers with `reply`, and returns the
/// request's query and JSON body for the test to inspect.
async fn expect(
    h: &mut ApiHandle,
    method: Method,
    path: &str,
    status: StatusCode,
    reply: Value,
) -> (String, Value) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
        .expect("service dropped");
    assert_eq!(
        (req.method(), req.uri().path()),
        (&method, path),
        "unexpected request"
    );
    let query = req.uri().query().unwrap_or_default().to_string();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let response = Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
        .unwrap();
    send.send_response(response);
    (query, body)
}

fn env_of(deployment: &Value) -> serde_json::Map<String, Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
        .collect()
}

/// The Deployment as the API server would return it: the applied object plus a status.
fn rolled_out(mut applied: Value, ready: i64) -> Value {
    applied["metadata"]["generation"] = json!(1);
    applied["status"] = json!({"observedGeneration": 1, "replicas": ready, "updatedReplicas": ready,
                               "readyReplicas": ready, "availableReplicas": ready});
    applied
}

/// Any valid AppServer: what the status patch answers with is not read.
fn stored() -> Value {
    serde_json::to_value(
        appserver(gunicorn(json!({"cpu": "1"})), None)
            .0
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

const DEPLOY: &str = "/apis/apps/v1/namespaces/shop/deployments/api";
const SERVICE: &str = "/api/v1/namespaces/shop/services/api";
const STATUS: &str = "/apis/appserver.dev/v1alpha1/namespaces/shop/appservers/api/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

#[tokio::test]
async fn applies_a_sized_deployment_and_reports_ready() {
    let (ctx, mut api) = context();
    let aps = appserver(gunicorn(json!({"cpu": "2", "memory": "4Gi"})), None);
    // Run the reconcile and the scripted API side by side.
    let (result, sent) = tokio::join!(reconcile(aps, ctx.clone()), async {
        let mut sent = Vec::new();
        sent.push(expect_apply(&mut api).await);
        sent.push(
            expect(&mut api, Method::PATCH, SERVICE, StatusCode::OK, json!({}))
                .await
                .1,
        );
        sent.push(
            expect(&mut api, Method::PATCH, STATUS, StatusCode::OK, stored())
                .await
                .1,
        );
        sent.push(
            expect(
                &mut api,
                Method::POST,
                EVENTS,
                StatusCode::CREATED,
                json!({}),
            )
            .await
            .1,
        );
        sent
    });
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    let env = env_of(&sent[0]);
    assert_eq!(env["GUNICORN_WORKERS"], "5");
    assert_eq!(env["GUNICORN_THREADS"], "4");
    assert_eq!(sent[0]["spec"]["replicas"], 2);
    assert_eq!(sent[0]["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(sent[1]["spec"]["ports"][0]["port"], 8080);
    let status = &sent[2]["status"];
    assert_eq!(
        (status["workers"].as_i64(), status["threads"].as_i64()),
        (Some(5), Some(4))
    );
    assert_eq!(status["observedGeneration"], 2);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Available"))
    );
    assert_eq!(sent[3]["reason"], "Sized");
    assert_eq!(sent[3]["regarding"]["name"], "api");
}

/// Answers the Deployment apply with the applied object, rolled out with 2 ready pods.
async fn expect_apply(api: &mut ApiHandle) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((req.method(), req.uri().path()), (&Method::PATCH, DEPLOY));
    let query = req.uri().query().unwrap_or_default().to_string();
    assert!(
        query.contains("fieldManager=appserver-operator") && query.contains("force=true"),
        "{query}"
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let reply = rolled_out(body.clone(), 2);
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let (ctx, mut api) = context();
    let spec = gunicorn(json!({"cpu": "1", "memory": "1Gi"}));
    // First pass: capture the status the operator writes.
    let (_, status) = tokio::join!(
        reconcile(appserver(spec.clone(), None), ctx.clone()),
        async {
            expect_apply(&mut api).await;
            expect(&mut api, Method::PATCH, SERVICE, StatusCode::OK, json!({})).await;
            let status = expect(&mut api, Method::PATCH, STATUS, StatusCode::OK, stored())
                .await
                .1;
            expect(
                &mut api,
                Method::POST,
                EVENTS,
                StatusCode::CREATED,
                json!({}),
            )
            .await;
            status["status"].clone()
        }
    );
    // Second pass with that status in place: applies again (idempotent), writes no status, no Event.
    let (result, ()) = tokio::join!(
        reconcile(appserver(spec, Some(status)), ctx.clone()),
        async {
            expect_apply(&mut api).await;
            expect(&mut api, Method::PATCH, SERVICE, StatusCode::OK, json!({})).await;
        }
    );
    assert!(result.is_ok());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.next_request())
            .await
            .is_err(),
        "nothing more may be sent"
    );
}

#[tokio::test]
async fn impossible_sizing_is_degraded_and_applies_nothing() {
    let (ctx, mut api) = context();
    let mut spec = gunicorn(json!({"cpu": "2", "memory": "512Mi"}));
    spec["memory"] = json!({"baseMiB": 300, "perWorkerMiB": 1536});
    let (result, (status, event)) =
        tokio::join!(reconcile(appserver(spec, None), ctx.clone()), async {
            // No Deployment or Service apply: the first request is the status.
            let status = expect(&mut api, Method::PATCH, STATUS, StatusCode::OK, stored())
                .await
                .1;
            let event = expect(
                &mut api,
                Method::POST,
                EVENTS,
                StatusCode::CREATED,
                json!({}),
            )
            .await
            .1;
            (status, event)
        });
    assert!(
        result.is_ok(),
        "a spec that cannot fit is reported, not an error"
    );
    let degraded = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("DoesNotFit"))
    );
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("1 worker(s) need 1836 MiB"),
        "{degraded}"
    );
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("DoesNotFit"))
    );
}

#[tokio::test]
async fn api_errors_requeue_with_growing_backoff() {
    let (ctx, mut api) = context();
    let aps = appserver(gunicorn(json!({"cpu": "1"})), None);
    let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is away",
                         "reason": "InternalError", "code": 500});
    for expected in [1, 2, 4] {
        let (result, _) = tokio::join!(reconcile(aps.clone(), ctx.clone()), async {
            expect(
                &mut api,
                Method::PATCH,
                DEPLOY,
                StatusCode::INTERNAL_SERVER_ERROR,
                failure.clone(),
            )
            .await
        });
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Apply {
                    kind: "Deployment",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.category(), "apply");
        // The error names the AppServer with its namespace.
        assert!(
            err.to_string().contains("applying Deployment shop/api: "),
            "{err}"
        );
        assert_eq!(
            error_policy(aps.clone(), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(expected))
        );
    }
    let text = ctx.metrics.encode().unwrap();
    assert!(
        text.contains("appserver_operator_reconcile_errors_total{category=\"apply\"} 3"),
        "{text}"
    );
}

#[test]
fn backoff_is_capped() {
    assert_eq!(backoff_delay(1), Duration::from_secs(1));
    assert_eq!(backoff_delay(3), Duration::from_secs(4));
    assert_eq!(backoff_delay(40), Duration::from_secs(300));
}
