//! One TG case's journey is one trace: tg-ingress → the adapters → tg-egress, exported over
//! OTLP/HTTP to an in-process receiver.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::support;

#[derive(Clone, Debug)]
struct Received {
    trace_id: Vec<u8>,
    name: String,
    kind: i32,
}

/// An OTLP/HTTP (protobuf) receiver on a free port: `POST /v1/traces`.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                let mut sink = sink.lock().unwrap();
                for rs in request.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            sink.push(Received {
                                trace_id: s.trace_id,
                                name: s.name,
                                kind: s.kind,
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_document_upload_is_one_trace_from_ingress_through_the_adapters_to_egress() {
    let (endpoint, spans) = receiver().await;
    let _telemetry = tgb_runtime::telemetry::init_with_otlp_endpoint(
        "tg-bridge",
        tgb_runtime::LogFormat::Json,
        &endpoint,
    );
    let (system, _dir) = support::system(&[]).await;

    // A partner uploads a document whose announced digest is wrong: tg-ingress stores the
    // webhook, dynamics-adapter records the document on the case, document-review refuses it
    // and tg-egress asks the partner for a re-upload.
    let partner = serde_json::json!({"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"});
    let upload: tgb_sandbox::tg::model::UploadDocument =
        serde_json::from_value(serde_json::json!({
            "partner": partner,
            "doc_type": "tax_form",
            "file_name": "w9.pdf",
            "media_type": "application/pdf",
            "content_base64": "JVBERi0xLjQK",
            "announce_sha256": "0000000000000000000000000000000000000000000000000000000000000000",
        }))
        .unwrap();
    system.sandbox.tg().upload_document(upload).unwrap();

    let has = |spans: &[Received], trace: &[u8], prefix: &str| {
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.name.starts_with(prefix))
    };
    let journey = tgb_testkit::eventually(
        "the journey's spans exported",
        tgb_testkit::HANG_GUARD,
        || async {
            let spans = spans.lock().unwrap().clone();
            // Any webhook delivery (a first attempt may have been answered 503 and retried,
            // with a trace of its own) whose trace reaches every service.
            let trace = spans
                .iter()
                .filter(|s| s.name.contains("/webhooks/tg"))
                .map(|s| s.trace_id.clone())
                .find(|trace| {
                    has(&spans, trace, "document-review ")
                        && has(&spans, trace, "dynamics-adapter")
                        && has(&spans, trace, "tg-egress ")
                        && spans
                            .iter()
                            .any(|s| &s.trace_id == trace && s.kind == SpanKind::Client as i32)
                })?;
            Some(
                spans
                    .into_iter()
                    .filter(|s| s.trace_id == trace)
                    .collect::<Vec<_>>(),
            )
        },
    )
    .await;
    let journey = match journey {
        Ok(j) => j,
        Err(e) => {
            let names: Vec<_> = spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect();
            panic!("{e}: exported spans: {names:?}");
        }
    };
    let names: Vec<&str> = journey.iter().map(|s| s.name.as_str()).collect();
    println!("{names:#?}");
    assert!(names.iter().any(|n| n.starts_with("publish")), "{names:?}");
    assert!(
        names.contains(&"tg-egress tgb.v1.review.document.refused"),
        "{names:?}"
    );
    system.stop().await;
}
