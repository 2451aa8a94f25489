//! `$batch` bodies: `multipart/mixed` with `application/http` parts, change sets as nested
//! multiparts (atomic on the server), and the parsing of the answer.

use reqwest::Method;
use serde_json::Value;

/// One request inside a change set.
#[derive(Clone, Debug)]
pub struct BatchRequest {
    /// `PATCH`, `POST`, `DELETE`.
    pub method: Method,
    /// Path relative to the Web API root (`incidents(tgb_tgcaseid='C-1')`) or `$<Content-ID>`.
    pub path: String,
    /// Extra headers (`If-Match`, `Prefer`, …).
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
}

impl BatchRequest {
    /// A request with a JSON body.
    pub fn new(method: Method, path: impl Into<String>, body: Option<Value>) -> Self {
        BatchRequest {
            method,
            path: path.into(),
            headers: Vec::new(),
            body,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// One answer inside a `$batch` answer.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchAnswer {
    /// HTTP status of the part.
    pub status: u16,
    /// Its headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Its JSON body, if any.
    pub body: Option<Value>,
}

impl BatchAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds the body of a batch whose items are change sets; `base` is the absolute Web API root
/// ending with `/`. Returns (content type, body).
pub fn build(
    base: &str,
    change_sets: &[Vec<BatchRequest>],
    boundary_seed: &str,
) -> (String, String) {
    let batch = format!("batch_{boundary_seed}");
    let mut out = String::new();
    let mut content_id = 0u32;
    for (i, set) in change_sets.iter().enumerate() {
        let cs = format!("changeset_{boundary_seed}_{i}");
        out.push_str(&format!(
            "--{batch}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"
        ));
        for req in set {
            content_id += 1;
            out.push_str(&format!(
                "--{cs}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: {content_id}\r\n\r\n"
            ));
            // The request line is split on spaces: the URL goes percent-encoded (spaces,
            // non-ASCII letters in `$filter` literals), as a URL sent on its own would.
            let url = if req.path.starts_with('$') {
                req.path.clone()
            } else {
                let raw = format!("{base}{}", req.path);
                url::Url::parse(&raw).map_or(raw, String::from)
            };
            out.push_str(&format!("{} {url} HTTP/1.1\r\n", req.method));
            for (k, v) in &req.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            match &req.body {
                Some(body) => {
                    out.push_str("Content-Type: application/json\r\n\r\n");
                    out.push_str(&body.to_string());
                    out.push_str("\r\n");
                }
                // The empty line ending the headers, then the empty line ending the part.
                None => out.push_str("\r\n\r\n"),
            }
        }
        out.push_str(&format!("--{cs}--\r\n"));
    }
    out.push_str(&format!("--{batch}--\r\n"));
    (format!("multipart/mixed; boundary={batch}"), out)
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn split_head(raw: &str) -> (&str, &str) {
    let raw = raw.trim_start_matches(['\r', '\n']);
    if let Some(i) = raw.find("\r\n\r\n") {
        (&raw[..i], &raw[i + 4..])
    } else if let Some(i) = raw.find("\n\n") {
        (&raw[..i], &raw[i + 2..])
    } else {
        (raw, "")
    }
}

fn headers_of(head: &str) -> Vec<(String, String)> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for chunk in body.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        out.push(chunk);
    }
    out
}

fn http_part(content: &str) -> Result<BatchAnswer, String> {
    let (head, body) = split_head(content);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers = headers_of(&lines.collect::<Vec<_>>().join("\n"));
    let body = body.trim();
    let body = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_str(body).map_err(|e| format!("part body is not JSON: {e}"))?)
    };
    Ok(BatchAnswer {
        status,
        headers,
        body,
    })
}

/// Parses a `$batch` answer into one entry per item: the answers of a change set that
/// succeeded, or the single error answer of one that failed.
pub fn parse(content_type: &str, body: &str) -> Result<Vec<Vec<BatchAnswer>>, String> {
    let b = boundary(content_type).ok_or("the $batch answer has no boundary")?;
    let mut items = Vec::new();
    for raw in parts(body, &b) {
        let (head, content) = split_head(raw);
        let mime = headers_of(head);
        let ct = mime
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if ct.to_ascii_lowercase().starts_with("multipart/mixed") {
            let inner = boundary(&ct).ok_or("a change set answer has no boundary")?;
            let mut answers = Vec::new();
            for raw in parts(content, &inner) {
                let (_, content) = split_head(raw);
                answers.push(http_part(content)?);
            }
            items.push(answers);
        } else {
            items.push(vec![http_part(content)?]);
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_built_batch_names_each_change_set_and_content_id() {
        let sets = vec![
            vec![BatchRequest::new(
                Method::PATCH,
                "incidents(tgb_tgcaseid='C-1')",
                Some(json!({"title": "x"})),
            )],
            vec![
                BatchRequest::new(Method::POST, "annotations", Some(json!({"subject": "n"})))
                    .header("Prefer", "return=representation"),
            ],
        ];
        let (ct, body) = build("http://h/api/data/v9.2/", &sets, "s");
        assert_eq!(ct, "multipart/mixed; boundary=batch_s");
        assert!(
            body.contains("PATCH http://h/api/data/v9.2/incidents(tgb_tgcaseid='C-1') HTTP/1.1")
        );
        assert!(body.contains("Content-ID: 2"));
        assert!(body.contains("--changeset_s_1--"));
        assert!(body.ends_with("--batch_s--\r\n"));
    }

    #[test]
    fn request_lines_are_percent_encoded_and_a_part_without_body_ends_with_an_empty_line() {
        let sets = vec![vec![BatchRequest::new(
            Method::GET,
            "accounts?$select=accountid&$filter=name eq 'Ünï co'",
            None,
        )]];
        let (_, body) = build("http://h/api/data/v9.2/", &sets, "s");
        let line = body
            .lines()
            .find(|l| l.starts_with("GET "))
            .expect("a request line");
        assert_eq!(line.split(' ').count(), 3, "{line}");
        assert!(
            line.contains("name%20eq%20%27%C3%9Cn%C3%AF%20co%27"),
            "{line}"
        );
        assert!(
            body.contains(" HTTP/1.1\r\n\r\n\r\n--changeset_s_0--"),
            "{body:?}"
        );
    }

    #[test]
    fn answers_of_change_sets_and_failures_are_parsed() {
        let body = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nHTTP/1.1 200 OK\r\nOData-Version: 4.0\r\nETag: W/\"5\"\r\nContent-Type: application/json\r\n\r\n{\"incidentid\":\"a\"}\r\n--changesetresponse_2--\r\n--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n{\"error\":{\"code\":\"0x1\",\"message\":\"m\"}}\r\n--batchresponse_1--\r\n";
        let items = parse("multipart/mixed; boundary=batchresponse_1", body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0][0].status, 200);
        assert_eq!(items[0][0].header("etag"), Some("W/\"5\""));
        assert_eq!(items[0][0].body, Some(json!({"incidentid": "a"})));
        assert_eq!(items[1][0].status, 400);
    }
}
