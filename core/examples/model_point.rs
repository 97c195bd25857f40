//! Evaluates the workload model at single points, for the gunicorn calibration benchmark
//! (`bench/calibrate/run.sh`).
//!
//! Reads JSON lines on stdin, one point each:
//!
//! ```text
//! {"cpu":1,"workers":2,"threads":4,"s":0.02,"d":0.05,"rps":30}
//! ```
//!
//! (`cpu` in cores, `s` CPU seconds and `d` waiting seconds per request, `rps` offered requests
//! per second; optional `backlog`, default gunicorn's 2048) and prints one JSON line per input:
//!
//! ```text
//! {"throughput":30.0,"p50":0.05,"p95":0.07,"p99":0.09,"cpuCores":0.6,"queue":0.1,...}
//! ```
//!
//! A line that is not a valid point prints `{"error":"...","field":"..."}` instead; blank lines
//! are skipped. Run with `cargo run -q -p appserver-core --example model_point`.

use std::io::{self, BufRead, BufWriter, Write};

use appserver_core::model::{DEFAULT_BACKLOG, Pod, Workload, serve};
use serde_json::{Map, Value, json};

/// One point of the model, as read from a line.
struct Point {
    cpu: f64,
    workers: u32,
    threads: u32,
    s: f64,
    d: f64,
    rps: f64,
    /// Squared coefficient of variation of the service time (1 = exponential, 0 = fixed).
    cv2: f64,
    backlog: u32,
}

/// Why a line is not a point: the field at fault (if one is) and what is wrong with it.
struct BadLine {
    field: Option<&'static str>,
    message: String,
}

impl BadLine {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        match self.field {
            Some(field) => json!({ "error": format!("{field}: {}", self.message), "field": field }),
            None => json!({ "error": self.message }),
        }
    }
}

fn number(obj: &Map<String, Value>, field: &'static str) -> Result<f64, BadLine> {
    let value = obj
        .get(field)
        .ok_or_else(|| BadLine::field(field, "missing"))?;
    let x = value
        .as_f64()
        .ok_or_else(|| BadLine::field(field, format!("not a number: {value}")))?;
    if !x.is_finite() {
        return Err(BadLine::field(field, "not finite"));
    }
    Ok(x)
}

fn non_negative(obj: &Map<String, Value>, field: &'static str) -> Result<f64, BadLine> {
    let x = number(obj, field)?;
    if x < 0.0 {
        return Err(BadLine::field(field, format!("negative: {x}")));
    }
    Ok(x)
}

fn positive(obj: &Map<String, Value>, field: &'static str) -> Result<f64, BadLine> {
    let x = number(obj, field)?;
    if x <= 0.0 {
        return Err(BadLine::field(field, format!("not positive: {x}")));
    }
    Ok(x)
}

fn count(value: &Value, field: &'static str) -> Result<u32, BadLine> {
    let n = value
        .as_u64()
        .ok_or_else(|| BadLine::field(field, format!("not a non-negative integer: {value}")))?;
    u32::try_from(n).map_err(|_| BadLine::field(field, format!("too large: {n}")))
}

fn positive_count(obj: &Map<String, Value>, field: &'static str) -> Result<u32, BadLine> {
    let value = obj
        .get(field)
        .ok_or_else(|| BadLine::field(field, "missing"))?;
    match count(value, field)? {
        0 => Err(BadLine::field(field, "must be at least 1")),
        n => Ok(n),
    }
}

fn parse(line: &str) -> Result<Point, BadLine> {
    let value: Value = serde_json::from_str(line).map_err(|e| BadLine {
        field: None,
        message: format!("not JSON: {e}"),
    })?;
    let obj = value.as_object().ok_or_else(|| BadLine {
        field: None,
        message: "not a JSON object".into(),
    })?;
    let backlog = match obj.get("backlog") {
        None | Some(Value::Null) => DEFAULT_BACKLOG,
        Some(v) => count(v, "backlog")?,
    };
    Ok(Point {
        cpu: positive(obj, "cpu")?,
        workers: positive_count(obj, "workers")?,
        threads: positive_count(obj, "threads")?,
        s: non_negative(obj, "s")?,
        d: non_negative(obj, "d")?,
        rps: non_negative(obj, "rps")?,
        cv2: match obj.get("cv2") {
            None | Some(Value::Null) => 1.0,
            Some(_) => non_negative(obj, "cv2")?,
        },
        backlog,
    })
}

fn evaluate(p: &Point) -> Value {
    let pod = Pod {
        cpu: p.cpu,
        memory_mib: None,
        workers: p.workers,
        slots_per_worker: p.threads,
    };
    let mut workload = Workload::new(p.s, p.d);
    workload.backlog = p.backlog;
    workload.service_cv2 = p.cv2;
    let out = serve(&pod, &workload, p.rps, 0.0);
    // The capacity: what the pod serves when offered far more than it can.
    let capacity = serve(&pod, &workload, 1e12, 0.0).throughput;
    json!({
        "throughput": out.throughput,
        "p50": out.latency(0.50),
        "p95": out.latency(0.95),
        "p99": out.latency(0.99),
        "cpuCores": out.cpu_cores,
        "queue": out.queue,
        "dropped": out.dropped,
        "parallel": out.parallel,
        "capacity": capacity,
    })
}

fn main() -> io::Result<()> {
    let stdin = io::stdin();
    let mut out = BufWriter::new(io::stdout().lock());
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match parse(&line) {
            Ok(point) => evaluate(&point),
            Err(bad) => bad.to_json(),
        };
        writeln!(out, "{answer}")?;
        // One answer per line as it comes, so a driver can talk to a running process.
        out.flush()?;
    }
    Ok(())
}
