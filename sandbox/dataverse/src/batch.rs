//! `$batch`: `multipart/mixed` with `application/http` parts and atomic change sets.

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use uuid::Uuid;

use crate::api::{Prefer, Req, Resp, Settings, execute};
use crate::error::{ODataError, codes};
use crate::store::{Ctx, Store};

/// One request inside a batch.
#[derive(Debug)]
struct Part {
    content_id: Option<String>,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Debug)]
enum Item {
    Single(Part),
    ChangeSet(Vec<Part>),
}

/// A complete batch answer.
#[derive(Debug)]
pub struct BatchResponse {
    /// Outer status.
    pub status: StatusCode,
    /// Outer content type (with boundary).
    pub content_type: String,
    /// Multipart body.
    pub body: String,
}

fn bad(msg: impl Into<String>) -> ODataError {
    ODataError::bad_request(codes::INVALID_ARGUMENT, msg)
}

/// The `boundary` parameter of a multipart content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn skip_line_end(s: &str) -> &str {
    let s = s.trim_start_matches([' ', '\t']);
    s.strip_prefix("\r\n")
        .or_else(|| s.strip_prefix('\n'))
        .unwrap_or(s)
}

fn strip_line_end(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

fn split_multipart<'a>(body: &'a str, boundary: &str) -> Result<Vec<&'a str>, ODataError> {
    let delim = format!("--{boundary}");
    let first = body.find(&delim).ok_or_else(|| {
        bad(format!(
            "The batch body does not contain the boundary '{boundary}'."
        ))
    })?;
    let mut rest = &body[first + delim.len()..];
    let mut parts = Vec::new();
    loop {
        if rest.starts_with("--") {
            return Ok(parts);
        }
        let after = skip_line_end(rest);
        let next = after.find(&delim).ok_or_else(|| {
            bad(format!(
                "The multipart body is missing the closing boundary '--{boundary}--'."
            ))
        })?;
        parts.push(strip_line_end(&after[..next]));
        rest = &after[next + delim.len()..];
    }
}

/// Splits a header block from the content after the first empty line.
fn split_head(s: &str) -> (&str, &str) {
    let crlf = s.find("\r\n\r\n").map(|i| (i, 4));
    let lf = s.find("\n\n").map(|i| (i, 2));
    let cut = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match cut {
        Some((i, n)) => (&s[..i], &s[i + n..]),
        None => (s, ""),
    }
}

fn parse_headers(block: &str) -> Result<HeaderMap, ODataError> {
    let mut h = HeaderMap::new();
    for line in block.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("Invalid header line '{line}' in a batch part.")))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| bad(format!("Invalid header name '{k}' in a batch part.")))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| bad(format!("Invalid header value for '{k}' in a batch part.")))?;
        h.append(name, value);
    }
    Ok(h)
}

fn parse_http_part(mime_headers: &HeaderMap, content: &str) -> Result<Part, ODataError> {
    let content = content.trim_start_matches(['\r', '\n']);
    let (head, body) = split_head(content);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().trim();
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(url)) = (words.next(), words.next()) else {
        return Err(bad(format!(
            "Invalid request line '{request_line}' in a batch part."
        )));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("Invalid method '{method}' in a batch part.")))?;
    let header_block: Vec<&str> = lines.collect();
    let headers = parse_headers(&header_block.join("\n"))?;
    let body = body.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
    Ok(Part {
        content_id: mime_headers
            .get("content-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string()),
        method,
        url: url.to_string(),
        headers,
        body,
    })
}

fn parse_items(content_type: &str, body: &str) -> Result<Vec<Item>, ODataError> {
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/mixed")
    {
        return Err(bad(
            "A $batch request must have Content-Type multipart/mixed with a boundary.",
        ));
    }
    let b =
        boundary(content_type).ok_or_else(|| bad("The $batch Content-Type has no boundary."))?;
    let mut items = Vec::new();
    for raw in split_multipart(body, &b)? {
        let (head, content) = split_head(raw.trim_start_matches(['\r', '\n']));
        let mime = parse_headers(head)?;
        let ct = mime
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if ct.to_ascii_lowercase().starts_with("multipart/mixed") {
            let inner = boundary(&ct).ok_or_else(|| bad("A change set has no boundary."))?;
            let mut parts = Vec::new();
            for raw in split_multipart(content, &inner)? {
                let (head, content) = split_head(raw.trim_start_matches(['\r', '\n']));
                let mime = parse_headers(head)?;
                parts.push(parse_http_part(&mime, content)?);
            }
            items.push(Item::ChangeSet(parts));
        } else {
            items.push(Item::Single(parse_http_part(&mime, content)?));
        }
    }
    Ok(items)
}

fn split_url(url: &str) -> Result<(String, Option<String>), ODataError> {
    let rel = if url.starts_with('$') {
        url.to_string()
    } else if let Some(i) = url.find("/api/data/v9.2/") {
        url[i + "/api/data/v9.2/".len()..].to_string()
    } else if url.starts_with("http://") || url.starts_with("https://") {
        return Err(bad(format!("The URL '{url}' is not a Web API v9.2 URL.")));
    } else {
        url.trim_start_matches('/').to_string()
    };
    Ok(match rel.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (rel, None),
    })
}

fn run_part(
    settings: &Settings,
    st: &mut Store,
    ctx: &Ctx,
    part: &Part,
    cids: &HashMap<String, String>,
) -> Resp {
    let (path, query) = match split_url(&part.url) {
        Ok(x) => x,
        Err(e) => return Resp::error(&e),
    };
    let req = Req {
        method: part.method.clone(),
        path: &path,
        query: query.as_deref(),
        headers: &part.headers,
        body: &part.body,
    };
    execute(settings, st, ctx, &req, cids)
}

fn write_part(out: &mut String, boundary: &str, content_id: Option<&str>, resp: &Resp) {
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    ));
    if let Some(id) = content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&format!(
        "HTTP/1.1 {} {}\r\nOData-Version: 4.0\r\n",
        resp.status.as_u16(),
        resp.status.canonical_reason().unwrap_or("")
    ));
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    match &resp.body {
        Some(b) => {
            out.push_str("Content-Type: application/json; odata.metadata=minimal\r\n\r\n");
            out.push_str(&b.to_string());
            out.push_str("\r\n");
        }
        None => out.push_str("\r\n\r\n"),
    }
}

/// Runs a whole batch against the store (the caller holds the store lock).
pub fn run(
    settings: &Settings,
    st: &mut Store,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
    max_requests: usize,
) -> Result<BatchResponse, ODataError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body = std::str::from_utf8(body).map_err(|_| bad("The $batch body is not UTF-8."))?;
    let items = parse_items(content_type, body)?;
    let count: usize = items
        .iter()
        .map(|i| match i {
            Item::Single(_) => 1,
            Item::ChangeSet(p) => p.len(),
        })
        .sum();
    if count > max_requests {
        return Err(bad(format!(
            "The number of requests in a batch ({count}) exceeds the limit of {max_requests}."
        )));
    }
    let continue_on_error = Prefer::from_headers(headers).continue_on_error;
    let batch_boundary = format!("batchresponse_{}", Uuid::new_v4());
    let mut out = String::new();
    let mut status = StatusCode::OK;
    for item in &items {
        let failed = match item {
            Item::Single(part) => {
                let resp = run_part(settings, st, ctx, part, &HashMap::new());
                write_part(&mut out, &batch_boundary, part.content_id.as_deref(), &resp);
                (resp.status.as_u16() >= 400).then_some(resp.status)
            }
            Item::ChangeSet(parts) => {
                // A change set of one request is as atomic as that request sent alone; a
                // larger one journals the rows it writes, to roll them back on a failure.
                let journaled = parts.len() > 1;
                if journaled {
                    st.begin();
                }
                let mut cids: HashMap<String, String> = HashMap::new();
                let mut answers: Vec<(Option<&str>, Resp)> = Vec::new();
                let mut failure: Option<(Option<&str>, Resp)> = None;
                for part in parts {
                    let resp = if part.method == Method::GET {
                        Resp::error(&bad("GET requests are not allowed in a change set."))
                    } else {
                        run_part(settings, st, ctx, part, &cids)
                    };
                    if resp.status.as_u16() >= 400 {
                        failure = Some((part.content_id.as_deref(), resp));
                        break;
                    }
                    if let (Some(cid), Some(url)) = (&part.content_id, resp.entity_id()) {
                        cids.insert(cid.clone(), url.to_string());
                    }
                    answers.push((part.content_id.as_deref(), resp));
                }
                match failure {
                    Some((cid, resp)) => {
                        // Atomic: nothing of the change set remains (forced races stay used).
                        if journaled {
                            st.rollback();
                        }
                        write_part(&mut out, &batch_boundary, cid, &resp);
                        Some(resp.status)
                    }
                    None => {
                        if journaled {
                            st.commit();
                        }
                        let cs = format!("changesetresponse_{}", Uuid::new_v4());
                        out.push_str(&format!(
                            "--{batch_boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"
                        ));
                        for (cid, resp) in &answers {
                            write_part(&mut out, &cs, *cid, resp);
                        }
                        out.push_str(&format!("--{cs}--\r\n"));
                        None
                    }
                }
            }
        };
        if let Some(s) = failed
            && !continue_on_error
        {
            status = s;
            break;
        }
    }
    out.push_str(&format!("--{batch_boundary}--\r\n"));
    Ok(BatchResponse {
        status,
        content_type: format!("multipart/mixed; boundary={batch_boundary}"),
        body: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_change_sets_and_single_parts() {
        let body = "--batch_A\r\nContent-Type: multipart/mixed; boundary=changeset_B\r\n\r\n--changeset_B\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nPOST /api/data/v9.2/accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"name\":\"A\"}\r\n--changeset_B--\r\n--batch_A\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/accounts?$select=name HTTP/1.1\r\n\r\n\r\n--batch_A--\r\n";
        let items = parse_items("multipart/mixed; boundary=\"batch_A\"", body).unwrap();
        assert_eq!(items.len(), 2);
        let Item::ChangeSet(parts) = &items[0] else {
            panic!()
        };
        assert_eq!(parts[0].content_id.as_deref(), Some("1"));
        assert_eq!(parts[0].body, b"{\"name\":\"A\"}");
        let Item::Single(get) = &items[1] else {
            panic!()
        };
        assert_eq!(get.method, Method::GET);
        assert_eq!(
            split_url(&get.url).unwrap().1.as_deref(),
            Some("$select=name")
        );
    }
}
