//! One Web API request against the store: shared by plain HTTP calls and `$batch` parts.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ODataError, codes};
use crate::query::{KeyPredicate, Query, parse_key};
use crate::schema::{Schema, Table};
use crate::store::{Ctx, Prepared, Store, key_columns, not_found_for_key, split_key};

/// Settings the executor needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest page (`odata.maxpagesize` is capped to it).
    pub page_size_cap: usize,
    /// Delta token lifetime in milliseconds.
    pub delta_token_lifetime_ms: u64,
    /// Organisation id (WhoAmI).
    pub organization_id: Uuid,
    /// Business unit id (WhoAmI).
    pub business_unit_id: Uuid,
}

/// A request, with the path relative to `/api/data/v9.2/`.
#[derive(Debug)]
pub struct Req<'a> {
    /// Method.
    pub method: Method,
    /// Path after `/api/data/v9.2/` (still percent-encoded).
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Body.
    pub body: &'a [u8],
}

/// An answer, before it becomes HTTP or a `$batch` part.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
}

impl Resp {
    pub(crate) fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: vec![],
            body: Some(body),
        }
    }

    pub(crate) fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: vec![],
            body: None,
        }
    }

    /// An error answer.
    pub fn error(e: &ODataError) -> Self {
        Self::json(e.status, e.body())
    }

    /// The `OData-EntityId` header, if any.
    pub fn entity_id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("OData-EntityId"))
            .map(|(_, v)| v.as_str())
    }
}

/// The `Prefer` preferences the emulator honours.
#[derive(Debug, Default, Clone)]
pub struct Prefer {
    /// `return=representation`.
    pub return_representation: bool,
    /// `odata.maxpagesize=N`.
    pub maxpagesize: Option<usize>,
    /// `odata.track-changes`.
    pub track_changes: bool,
    /// `odata.include-annotations=…`.
    pub include_annotations: bool,
    /// `odata.continue-on-error`.
    pub continue_on_error: bool,
}

impl Prefer {
    /// Reads every `Prefer` header.
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut p = Prefer::default();
        for v in headers.get_all("prefer") {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let item = item.trim();
                let (k, val) = item.split_once('=').unwrap_or((item, ""));
                match k.trim() {
                    "return" => p.return_representation = val.trim() == "representation",
                    "odata.maxpagesize" => p.maxpagesize = val.trim().parse().ok(),
                    "odata.track-changes" => p.track_changes = true,
                    "odata.include-annotations" => p.include_annotations = true,
                    "odata.continue-on-error" => p.continue_on_error = true,
                    _ => {}
                }
            }
        }
        p
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Executes one request.
pub fn execute(
    settings: &Settings,
    st: &mut Store,
    ctx: &Ctx,
    req: &Req<'_>,
    cids: &HashMap<String, String>,
) -> Resp {
    match route(settings, st, ctx, req, cids) {
        Ok(r) => r,
        Err(e) => Resp::error(&e),
    }
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ODataError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ODataError::bad_request(
            codes::ODATA,
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ODataError::bad_request(
            codes::ODATA,
            format!("The request body is not valid JSON: {e}"),
        )),
    }
}

fn route(
    settings: &Settings,
    st: &mut Store,
    ctx: &Ctx,
    req: &Req<'_>,
    cids: &HashMap<String, String>,
) -> Result<Resp, ODataError> {
    let decoded = percent_encoding::percent_decode_str(req.path).decode_utf8_lossy();
    let mut path = decoded.trim_start_matches('/').to_string();
    if let Some(rest) = path.strip_prefix('$')
        && !rest.starts_with("batch")
        && !rest.starts_with("metadata")
    {
        let (cid, tail) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
        let url = cids.get(cid).ok_or_else(|| {
            ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("Content-ID Reference: '${cid}' does not exist in the batch context."),
            )
        })?;
        let rel = url
            .find("/api/data/v9.2/")
            .map(|i| &url[i + "/api/data/v9.2/".len()..])
            .unwrap_or(url);
        path = if tail.is_empty() {
            rel.to_string()
        } else {
            format!("{rel}/{tail}")
        };
    }
    let schema = Schema::get();
    match path.as_str() {
        "" => {
            let sets: Vec<Value> = schema
                .tables()
                .iter()
                .map(|t| json!({"name": t.entitysetname, "kind": "EntitySet", "url": t.entitysetname}))
                .collect();
            return Ok(Resp::json(
                StatusCode::OK,
                json!({"@odata.context": format!("{}/$metadata", ctx.base), "value": sets}),
            ));
        }
        "WhoAmI" | "WhoAmI()" => {
            if req.method != Method::GET {
                return Err(no_resource(ctx, &path));
            }
            return Ok(Resp::json(
                StatusCode::OK,
                json!({
                    "@odata.context": format!("{}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", ctx.base),
                    "BusinessUnitId": settings.business_unit_id.to_string(),
                    "UserId": ctx.caller.to_string(),
                    "OrganizationId": settings.organization_id.to_string(),
                }),
            ));
        }
        "CloseIncident" => {
            if req.method != Method::POST {
                return Err(no_resource(ctx, &path));
            }
            let body = parse_body(req.body)?;
            st.close_incident(ctx, &body, cids)?;
            return Ok(Resp::empty(StatusCode::NO_CONTENT));
        }
        "$batch" => {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                "A batch request cannot contain another batch request.",
            ));
        }
        _ => {}
    }
    if let Some(r) = st.meta.route(ctx, req, &path) {
        return r;
    }
    // Before the segment check: a `/` inside a key value is the key rule's refusal.
    crate::query::check_key_literals(&path)?;
    if path.contains('/') {
        return Err(ODataError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "The path '{path}' is not supported by the tg-bridge sandbox (no property or navigation segments)."
            ),
        ));
    }
    let (set, key) = match path.find('(') {
        Some(_) => {
            let (s, k) = split_key(&path).ok_or_else(|| {
                ODataError::bad_request(
                    codes::ODATA,
                    format!("Bad Request - Error in query syntax: '{path}'."),
                )
            })?;
            (s.to_string(), Some(parse_key(k)?))
        }
        None => (path.clone(), None),
    };
    let table = schema
        .table_by_set(&set)
        .ok_or_else(|| ODataError::segment(&set))?;
    let query = Query::parse(req.query)?;
    query.validate(table)?;
    // What the organisation has been customised with (an empty org lacks the solution).
    let body_props = match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let key_columns = match &key {
        Some(KeyPredicate::Alternate(pairs)) => {
            Some(pairs.iter().map(|(c, _)| c.clone()).collect())
        }
        _ => None,
    };
    st.meta.check_data_request(
        table,
        query.select.as_deref(),
        body_props.as_ref(),
        key_columns,
    )?;
    let prefer = Prefer::from_headers(req.headers);
    match (key, &req.method) {
        (None, &Method::GET) => list(settings, st, ctx, table, &query, &prefer),
        (None, &Method::POST) => {
            let body = parse_body(req.body)?;
            let p = st.prepare(table, &body, ctx, cids)?;
            let id = st.create(ctx, table, p, None, vec![])?;
            Ok(written(
                st,
                ctx,
                table,
                id,
                &query,
                &prefer,
                StatusCode::CREATED,
            ))
        }
        (Some(key), &Method::GET) => {
            let id = st
                .locate(table, &key)?
                .ok_or_else(|| not_found_for_key(table, &key))?;
            let row = st.row(&table.logicalname, id).expect("located");
            if header(req.headers, "if-none-match")
                .is_some_and(|v| v.split(',').any(|t| t.trim() == row.etag()))
            {
                return Ok(Resp::empty(StatusCode::NOT_MODIFIED));
            }
            let mut body = Store::render(
                table,
                row,
                query.select.as_deref(),
                prefer.include_annotations,
            );
            body.insert(
                "@odata.context".into(),
                json!(entity_context(ctx, table, &query)),
            );
            let mut r = Resp::json(StatusCode::OK, Value::Object(body));
            r.headers.push(("ETag".into(), row.etag()));
            Ok(r)
        }
        (Some(key), &Method::PATCH) => upsert(st, ctx, table, key, req, &query, &prefer, cids),
        (Some(key), &Method::DELETE) => {
            let id = st
                .locate(table, &key)?
                .ok_or_else(|| not_found_for_key(table, &key))?;
            if let Some(m) = header(req.headers, "if-match") {
                st.check_if_match(table, id, m)?;
            }
            st.delete(ctx, table, id)?;
            Ok(Resp::empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ODataError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "",
            format!(
                "The HTTP method '{}' is not allowed on '{path}'.",
                req.method
            ),
        )),
    }
}

fn no_resource(ctx: &Ctx, path: &str) -> ODataError {
    ODataError::new(
        StatusCode::NOT_FOUND,
        "",
        format!(
            "No HTTP resource was found that matches the request URI '{}/{path}'.",
            ctx.base
        ),
    )
}

fn entity_context(ctx: &Ctx, table: &Table, q: &Query) -> String {
    match &q.select {
        Some(sel) => format!(
            "{}/$metadata#{}({})/$entity",
            ctx.base,
            table.entitysetname,
            sel.join(",")
        ),
        None => format!("{}/$metadata#{}/$entity", ctx.base, table.entitysetname),
    }
}

fn collection_context(ctx: &Ctx, table: &Table, q: &Query) -> String {
    match &q.select {
        Some(sel) => format!(
            "{}/$metadata#{}({})",
            ctx.base,
            table.entitysetname,
            sel.join(",")
        ),
        None => format!("{}/$metadata#{}", ctx.base, table.entitysetname),
    }
}

fn written(
    st: &Store,
    ctx: &Ctx,
    table: &Table,
    id: Uuid,
    query: &Query,
    prefer: &Prefer,
    created_status: StatusCode,
) -> Resp {
    let entity_url = format!("{}/{}({id})", ctx.base, table.entitysetname);
    let row = st.row(&table.logicalname, id);
    let mut r = if prefer.return_representation
        && let Some(row) = row
    {
        let mut body = Store::render(
            table,
            row,
            query.select.as_deref(),
            prefer.include_annotations,
        );
        body.insert(
            "@odata.context".into(),
            json!(entity_context(ctx, table, query)),
        );
        let mut r = Resp::json(created_status, Value::Object(body));
        r.headers
            .push(("Preference-Applied".into(), "return=representation".into()));
        r
    } else {
        Resp::empty(StatusCode::NO_CONTENT)
    };
    if let Some(row) = row {
        r.headers.push(("ETag".into(), row.etag()));
    }
    r.headers
        .push(("OData-EntityId".into(), entity_url.clone()));
    if created_status == StatusCode::CREATED {
        r.headers.push(("Location".into(), entity_url));
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn upsert(
    st: &mut Store,
    ctx: &Ctx,
    table: &Table,
    key: KeyPredicate,
    req: &Req<'_>,
    query: &Query,
    prefer: &Prefer,
    cids: &HashMap<String, String>,
) -> Result<Resp, ODataError> {
    let body = parse_body(req.body)?;
    let key_values = match &key {
        KeyPredicate::Id(_) => vec![],
        KeyPredicate::Alternate(pairs) => {
            let values = key_columns(table, pairs)?;
            for (stored, _) in &values {
                let logical = crate::schema::lookup_of_value_name(stored).unwrap_or(stored);
                let in_body = body.keys().any(|k| {
                    k == logical
                        || k == stored
                        || k.strip_suffix("@odata.bind")
                            .and_then(|nav| table.navigation(nav))
                            .is_some_and(|(l, _)| l.logicalname == logical)
                });
                if in_body {
                    return Err(ODataError::bad_request(
                        codes::INVALID_ARGUMENT,
                        format!(
                            "The key attribute '{logical}' must not be in the request body when the record is addressed by its alternate key."
                        ),
                    ));
                }
            }
            values
        }
    };
    let prepared: Prepared = st.prepare(table, &body, ctx, cids)?;
    let if_match = header(req.headers, "if-match");
    let if_none_match = header(req.headers, "if-none-match");
    match st.locate(table, &key)? {
        Some(id) => {
            if if_none_match.is_some_and(|v| v.trim() == "*") {
                return Err(ODataError::duplicate());
            }
            if let Some(m) = if_match {
                st.check_if_match(table, id, m)?;
            }
            st.update(ctx, table, id, prepared)?;
            Ok(written(st, ctx, table, id, query, prefer, StatusCode::OK))
        }
        None => {
            if if_match.is_some() {
                return Err(not_found_for_key(table, &key));
            }
            let id_hint = match key {
                KeyPredicate::Id(id) => Some(id),
                KeyPredicate::Alternate(_) => None,
            };
            // A lookup in the key must designate an existing row, like a bind.
            let mut key_values = key_values;
            let mut annotations = Vec::new();
            for (stored, v) in &key_values {
                let Some(lookup) =
                    crate::schema::lookup_of_value_name(stored).and_then(|n| table.lookup(n))
                else {
                    continue;
                };
                let id = v
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| {
                        ODataError::bad_request(
                            codes::INVALID_ARGUMENT,
                            format!("The key value of '{stored}' must be a GUID."),
                        )
                    })?;
                let target = lookup
                    .targets
                    .iter()
                    .find(|t| st.row(&t.table, id).is_some())
                    .ok_or_else(|| {
                        ODataError::row_not_found(
                            lookup.targets.first().map_or("", |t| t.table.as_str()),
                            id,
                        )
                    })?;
                annotations.push((
                    format!("{stored}@Microsoft.Dynamics.CRM.lookuplogicalname"),
                    json!(target.table),
                ));
            }
            key_values.extend(annotations);
            let id = st.create(ctx, table, prepared, id_hint, key_values)?;
            Ok(written(
                st,
                ctx,
                table,
                id,
                query,
                prefer,
                StatusCode::CREATED,
            ))
        }
    }
}

fn now_ms() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

fn list(
    settings: &Settings,
    st: &Store,
    ctx: &Ctx,
    table: &Table,
    query: &Query,
    prefer: &Prefer,
) -> Result<Resp, ODataError> {
    let empty = Default::default();
    let rows = st.rows(&table.logicalname).unwrap_or(&empty);
    let select = query.select.as_deref();
    let set_url = format!("{}/{}", ctx.base, table.entitysetname);

    if let Some(token) = &query.deltatoken {
        return delta(settings, st, ctx, table, query, prefer, token);
    }
    if prefer.track_changes {
        if !st.meta.change_tracking(&table.logicalname) {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "Change tracking is not enabled for entity '{}'.",
                    table.logicalname
                ),
            ));
        }
        if query.filter.is_some() || !query.orderby.is_empty() || query.top.is_some() {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                "Change tracking requests cannot use $filter, $orderby, $top or $expand.",
            ));
        }
        let value: Vec<Value> = rows
            .values()
            .map(|r| Value::Object(Store::render(table, r, select, prefer.include_annotations)))
            .collect();
        let token = format!("{}!{}", st.version, now_ms());
        return Ok(Resp::json(
            StatusCode::OK,
            json!({
                "@odata.context": collection_context(ctx, table, query),
                "@odata.deltaLink": format!("{set_url}?{}", query.link_query(("$deltatoken", token))),
                "value": value,
            }),
        ));
    }

    let mut matched: Vec<&crate::store::Row> = rows
        .values()
        .filter(|r| query.filter.as_ref().is_none_or(|f| f.matches(&r.attrs)))
        .collect();
    if !query.orderby.is_empty() {
        matched.sort_by(|a, b| {
            for (name, desc) in &query.orderby {
                let av = a.attrs.get(name).unwrap_or(&Value::Null);
                let bv = b.attrs.get(name).unwrap_or(&Value::Null);
                let ord = crate::query::compare_values(av, bv).unwrap_or(std::cmp::Ordering::Equal);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let total = matched.len();
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!(collection_context(ctx, table, query)),
    );
    if query.count {
        out.insert("@odata.count".into(), json!(total));
    }
    let page: Vec<&crate::store::Row> = if let Some(top) = query.top {
        matched.into_iter().take(top).collect()
    } else {
        let size = prefer
            .maxpagesize
            .unwrap_or(settings.page_size_cap)
            .clamp(1, settings.page_size_cap);
        let skip = query.skiptoken.unwrap_or(0);
        let page: Vec<_> = matched.into_iter().skip(skip).take(size).collect();
        if skip + size < total {
            out.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{set_url}?{}",
                    query.link_query(("$skiptoken", (skip + size).to_string()))
                )),
            );
        }
        page
    };
    let value: Vec<Value> = page
        .into_iter()
        .map(|r| Value::Object(Store::render(table, r, select, prefer.include_annotations)))
        .collect();
    out.insert("value".into(), Value::Array(value));
    let mut r = Resp::json(StatusCode::OK, Value::Object(out));
    if let Some(size) = prefer.maxpagesize {
        r.headers.push((
            "Preference-Applied".into(),
            format!(
                "odata.maxpagesize={}",
                size.clamp(1, settings.page_size_cap)
            ),
        ));
    }
    Ok(r)
}

fn delta(
    settings: &Settings,
    st: &Store,
    ctx: &Ctx,
    table: &Table,
    query: &Query,
    prefer: &Prefer,
    token: &str,
) -> Result<Resp, ODataError> {
    let invalid = || {
        ODataError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("Invalid delta token '{token}'."),
        )
    };
    let (version, issued) = token.split_once('!').ok_or_else(invalid)?;
    let version: u64 = version.parse().map_err(|_| invalid())?;
    let issued: u64 = issued.parse().map_err(|_| invalid())?;
    if now_ms().saturating_sub(issued) >= settings.delta_token_lifetime_ms {
        return Err(ODataError::bad_request(
            codes::EXPIRED_VERSION_STAMP,
            "Version stamp associated with the client has expired. Please perform a full sync.",
        ));
    }
    let mut last: HashMap<Uuid, (u64, bool)> = HashMap::new();
    for c in st
        .changes
        .iter()
        .filter(|c| c.table == table.logicalname && c.version > version)
    {
        last.insert(c.id, (c.version, c.deleted));
    }
    let mut latest: Vec<(Uuid, (u64, bool))> = last.into_iter().collect();
    latest.sort_by_key(|(_, (v, _))| *v);
    let select = query.select.as_deref();
    let mut value = Vec::new();
    for (id, (_, deleted)) in latest {
        match st.row(&table.logicalname, id) {
            Some(row) if !deleted => value.push(Value::Object(Store::render(
                table,
                row,
                select,
                prefer.include_annotations,
            ))),
            _ => value.push(json!({
                "@odata.context": format!("{}/$metadata#{}/$deletedEntity", ctx.base, table.entitysetname),
                "id": id.to_string(),
                "reason": "deleted",
            })),
        }
    }
    let new_token = format!("{}!{}", st.version, now_ms());
    let set_url = format!("{}/{}", ctx.base, table.entitysetname);
    Ok(Resp::json(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/$delta", collection_context(ctx, table, query)),
            "@odata.deltaLink": format!("{set_url}?{}", query.link_query(("$deltatoken", new_token))),
            "value": value,
        }),
    ))
}
