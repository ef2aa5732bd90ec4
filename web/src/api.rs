//! The JSON API under `/api/v1`, and its OpenAPI document.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::admin::Change;
use crate::auth::Authorized;
use crate::history::{Series, Subject};
use crate::model::*;
use crate::problem::Problem;
use crate::WebState;

/// A JSON body whose errors are problem documents.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, Problem> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(Problem::new(e.status(), "invalid-body", e.body_text())),
        }
    }
}

/// Path parameters whose errors are problem documents.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params<T>, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Params(v)),
            Err(e) => Err(Problem::bad_request(e.body_text())),
        }
    }
}

pub(crate) fn find_pan(o: &Overview, pan: &str) -> Result<PanView, Problem> {
    o.pans.iter().find(|p| p.name == pan).cloned().ok_or_else(|| Problem::not_found(format!("no PAN {pan:?}")))
}

pub(crate) fn find_lun(o: &Overview, pan: &str, lun: &str) -> Result<LunView, Problem> {
    find_pan(o, pan)?
        .luns
        .into_iter()
        .find(|l| l.name == lun)
        .ok_or_else(|| Problem::not_found(format!("no LUN {lun:?} in PAN {pan:?}")))
}

pub(crate) fn find_node(o: &Overview, pan: &str, node: &str) -> Result<NodeView, Problem> {
    find_pan(o, pan)?
        .nodes
        .into_iter()
        .find(|n| n.name == node)
        .ok_or_else(|| Problem::not_found(format!("no node {node:?} in PAN {pan:?}")))
}

pub(crate) fn find_lan(o: &Overview, pan: &str, lan: &str) -> Result<LanView, Problem> {
    find_pan(o, pan)?
        .lans
        .into_iter()
        .find(|l| l.name == lan)
        .ok_or_else(|| Problem::not_found(format!("no LAN {lan:?} in PAN {pan:?}")))
}

fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

#[utoipa::path(get, path = "/api/v1/overview", tag = "state",
    responses((status = 200, description = "PANs, nodes, LUNs, LANs and ring connections", body = Overview)))]
async fn overview(State(s): State<WebState>) -> Json<Overview> {
    Json(s.overview().await)
}

#[utoipa::path(get, path = "/api/v1/pans", tag = "pans", responses((status = 200, body = Vec<PanView>)))]
async fn list_pans(State(s): State<WebState>) -> Json<Vec<PanView>> {
    Json(s.overview().await.pans)
}

#[utoipa::path(post, path = "/api/v1/pans", tag = "pans", request_body = NewPan, security(("token" = [])),
    responses((status = 201, body = PanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_pan(State(s): State<WebState>, _: Authorized, Body(b): Body<NewPan>) -> Result<Response, Problem> {
    s.apply(Change::CreatePan { pan: b.name.clone() }).await?;
    Ok(created(find_pan(&s.overview().await, &b.name)?))
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}", tag = "pans", params(("pan" = String, Path)),
    responses((status = 200, body = PanView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_pan(State(s): State<WebState>, Params(pan): Params<String>) -> Result<Json<PanView>, Problem> {
    Ok(Json(find_pan(&s.overview().await, &pan)?))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}", tag = "pans", params(("pan" = String, Path)),
    security(("token" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn delete_pan(
    State(s): State<WebState>,
    _: Authorized,
    Params(pan): Params<String>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::DeletePan { pan }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/nodes", tag = "nodes", params(("pan" = String, Path)),
    request_body = NewNode, security(("token" = [])),
    responses((status = 201, body = CreatedNode), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_node(
    State(s): State<WebState>,
    _: Authorized,
    Params(pan): Params<String>,
    Body(b): Body<NewNode>,
) -> Result<Response, Problem> {
    let credential = b.credential.unwrap_or_else(|| crate::auth::random_token(16));
    s.apply(Change::CreateNode {
        pan,
        node: b.name.clone(),
        credential: credential.clone(),
        uid: b.uid,
        spare: b.spare,
    })
    .await?;
    Ok(created(CreatedNode { name: b.name, credential }))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}/nodes/{node}", tag = "nodes",
    params(("pan" = String, Path), ("node" = String, Path)), security(("token" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_node(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, node)): Params<(String, String)>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::DeleteNode { pan, node }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/nodes/{node}/maps", tag = "nodes",
    params(("pan" = String, Path), ("node" = String, Path)), request_body = NewMap, security(("token" = [])),
    responses((status = 201, body = MapView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn map_lun(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, node)): Params<(String, String)>,
    Body(b): Body<NewMap>,
) -> Result<Response, Problem> {
    let change = Change::Map { pan, node, target: b.target, lun: b.lun, image: b.image.clone(), access: b.access };
    s.apply(change).await?;
    Ok(created(MapView { target: b.target, lun: b.lun, image: b.image, access: b.access }))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}/nodes/{node}/maps/{target}/{lun}", tag = "nodes",
    params(("pan" = String, Path), ("node" = String, Path), ("target" = u16, Path), ("lun" = u16, Path)),
    security(("token" = [])),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn unmap_lun(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, node, target, lun)): Params<(String, String, u16, u16)>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::Unmap { pan, node, target, lun }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/luns", tag = "luns", params(("pan" = String, Path)),
    request_body = NewLun, security(("token" = [])),
    responses((status = 201, body = LunView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_lun(
    State(s): State<WebState>,
    _: Authorized,
    Params(pan): Params<String>,
    Body(b): Body<NewLun>,
) -> Result<Response, Problem> {
    let name = b.name.clone();
    s.apply(Change::CreateLun { pan: pan.clone(), lun: b }).await?;
    Ok(created(find_lun(&s.overview().await, &pan, &name)?))
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}/luns/{lun}", tag = "luns",
    params(("pan" = String, Path), ("lun" = String, Path)),
    responses((status = 200, body = LunView), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_lun(
    State(s): State<WebState>,
    Params((pan, lun)): Params<(String, String)>,
) -> Result<Json<LunView>, Problem> {
    Ok(Json(find_lun(&s.overview().await, &pan, &lun)?))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}/luns/{lun}", tag = "luns",
    params(("pan" = String, Path), ("lun" = String, Path)), security(("token" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn delete_lun(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lun)): Params<(String, String)>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::DeleteLun { pan, lun }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/luns/{lun}/resize", tag = "luns",
    params(("pan" = String, Path), ("lun" = String, Path)), request_body = Resize, security(("token" = [])),
    responses((status = 200, body = LunView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn resize_lun(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lun)): Params<(String, String)>,
    Body(b): Body<Resize>,
) -> Result<Json<LunView>, Problem> {
    s.apply(Change::ResizeLun { pan: pan.clone(), lun: lun.clone(), size: b.size }).await?;
    Ok(Json(find_lun(&s.overview().await, &pan, &lun)?))
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/lans", tag = "lans", params(("pan" = String, Path)),
    request_body = NewLan, security(("token" = [])),
    responses((status = 201, body = LanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_lan(
    State(s): State<WebState>,
    _: Authorized,
    Params(pan): Params<String>,
    Body(b): Body<NewLan>,
) -> Result<Response, Problem> {
    let name = b.name.clone();
    s.apply(Change::CreateLan { pan: pan.clone(), lan: b }).await?;
    Ok(created(find_lan(&s.overview().await, &pan, &name)?))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}/lans/{lan}", tag = "lans",
    params(("pan" = String, Path), ("lan" = String, Path)), security(("token" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_lan(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan)): Params<(String, String)>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::DeleteLan { pan, lan }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/lans/{lan}/move-ip", tag = "lans",
    params(("pan" = String, Path), ("lan" = String, Path)), request_body = MoveIp, security(("token" = [])),
    responses((status = 200, body = LanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn move_ip(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan)): Params<(String, String)>,
    Body(b): Body<MoveIp>,
) -> Result<Json<LanView>, Problem> {
    s.apply(Change::MoveIp { pan: pan.clone(), lan: lan.clone(), to: b }).await?;
    Ok(Json(find_lan(&s.overview().await, &pan, &lan)?))
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/lans/{lan}/clusters", tag = "clusters",
    params(("pan" = String, Path), ("lan" = String, Path)), request_body = ClusterBody, security(("token" = [])),
    responses((status = 201, body = LanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_cluster(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan)): Params<(String, String)>,
    Body(b): Body<ClusterBody>,
) -> Result<Response, Problem> {
    s.apply(Change::CreateCluster { pan: pan.clone(), lan: lan.clone(), cluster: b }).await?;
    Ok(created(find_lan(&s.overview().await, &pan, &lan)?))
}

#[utoipa::path(put, path = "/api/v1/pans/{pan}/lans/{lan}/clusters/{cluster}", tag = "clusters",
    params(("pan" = String, Path), ("lan" = String, Path), ("cluster" = String, Path)), request_body = ClusterBody,
    security(("token" = [])),
    responses((status = 200, body = LanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn replace_cluster(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan, name)): Params<(String, String, String)>,
    Body(b): Body<ClusterBody>,
) -> Result<Json<LanView>, Problem> {
    s.apply(Change::ReplaceCluster { pan: pan.clone(), lan: lan.clone(), name, cluster: b }).await?;
    Ok(Json(find_lan(&s.overview().await, &pan, &lan)?))
}

#[utoipa::path(delete, path = "/api/v1/pans/{pan}/lans/{lan}/clusters/{cluster}", tag = "clusters",
    params(("pan" = String, Path), ("lan" = String, Path), ("cluster" = String, Path)), security(("token" = [])),
    responses((status = 204), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_cluster(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan, name)): Params<(String, String, String)>,
) -> Result<StatusCode, Problem> {
    s.apply(Change::DeleteCluster { pan, lan, name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pans/{pan}/lans/{lan}/clusters/{cluster}/drain", tag = "clusters",
    params(("pan" = String, Path), ("lan" = String, Path), ("cluster" = String, Path)), request_body = Drain,
    security(("token" = [])),
    responses((status = 200, body = LanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn drain(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, lan, name)): Params<(String, String, String)>,
    Body(b): Body<Drain>,
) -> Result<Json<LanView>, Problem> {
    s.apply(Change::Drain { pan: pan.clone(), lan: lan.clone(), name, drain: b }).await?;
    Ok(Json(find_lan(&s.overview().await, &pan, &lan)?))
}

struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "pangate admin API", description = "PANs, nodes, LUNs, maps and LANs of a pangate gateway."),
    paths(overview, list_pans, create_pan, get_pan, delete_pan, create_node, delete_node, map_lun, unmap_lun,
        create_lun, get_lun, delete_lun, resize_lun, create_lan, delete_lan, move_ip, create_cluster,
        replace_cluster, delete_cluster, drain, failover, list_iscsi_sessions, drop_iscsi_session, list_events,
        gateway_series, pan_series, lun_series, node_series, lan_series),
    modifiers(&TokenScheme)
)]
#[derive(Debug)]
pub struct ApiDoc;

#[utoipa::path(post, path = "/api/v1/pans/{pan}/nodes/{node}/failover", tag = "nodes",
    params(("pan" = String, Path), ("node" = String, Path)), request_body(content = Option<Failover>, description = "optional; without it the first free spare is used"),
    security(("token" = [])),
    responses((status = 200, body = PanView), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 500, body = Problem, content_type = "application/problem+json")))]
async fn failover(
    State(s): State<WebState>,
    _: Authorized,
    Params((pan, node)): Params<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<PanView>, Problem> {
    // The body is optional: none (or only whitespace) picks the first free spare.
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Failover>(&body)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid-body", format!("failover body: {e}")))?
            .to
    };
    s.apply(Change::Failover { pan: pan.clone(), node, to }).await?;
    Ok(Json(find_pan(&s.overview().await, &pan)?))
}

/// Which events to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only events numbered after this (0: from the oldest kept).
    #[serde(default)]
    pub after: u64,
    /// At most this many, the newest (default and most: 1000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "state", params(EventsQuery),
    responses((status = 200, description = "recent events, oldest first", body = Vec<EventView>),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_events(
    State(s): State<WebState>,
    q: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<EventView>>, Problem> {
    let axum::extract::Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(metrics::EVENTS_KEPT).min(metrics::EVENTS_KEPT);
    Ok(Json(s.events(q.after, limit).await))
}

#[utoipa::path(get, path = "/api/v1/iscsi/sessions", tag = "iscsi", responses((status = 200, body = Vec<IscsiSessionView>)))]
async fn list_iscsi_sessions(State(s): State<WebState>) -> Json<Vec<IscsiSessionView>> {
    Json(s.overview().await.iscsi_sessions)
}

#[utoipa::path(delete, path = "/api/v1/iscsi/sessions/{id}", tag = "iscsi", params(("id" = u64, Path)),
    security(("token" = [])),
    responses((status = 204), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn drop_iscsi_session(
    State(s): State<WebState>,
    _: Authorized,
    Params(id): Params<u64>,
) -> Result<StatusCode, Problem> {
    s.drop_iscsi_session(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which points of a series to return.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SeriesQuery {
    /// Only points sampled after this time, in seconds since the Unix epoch (default: the
    /// whole last hour).
    #[serde(default)]
    pub after: f64,
}

/// A subject's series, or a problem when the query is malformed or there is no such
/// subject. One created since the last sample has no charts yet.
async fn series(s: &WebState, subject: Subject, q: SeriesParams) -> Result<Json<Series>, Problem> {
    let axum::extract::Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    if !q.after.is_finite() {
        return Err(Problem::bad_request("after must be a finite number of seconds"));
    }
    let found = s.history().series(&subject, q.after);
    if let Some(series) = found {
        return Ok(Json(series));
    }
    let o = s.overview().await;
    let exists = match &subject {
        Subject::Gateway => true,
        Subject::Pan(p) => find_pan(&o, p).is_ok(),
        Subject::Lun(p, l) => find_lun(&o, p, l).is_ok(),
        Subject::Node(p, n) => find_node(&o, p, n).is_ok(),
        Subject::Lan(p, l) => find_lan(&o, p, l).is_ok(),
    };
    match exists {
        true => Ok(Json(Series::default())),
        false => Err(Problem::not_found(format!("no {subject}"))),
    }
}

type SeriesParams = Result<axum::extract::Query<SeriesQuery>, axum::extract::rejection::QueryRejection>;

#[utoipa::path(get, path = "/api/v1/series", tag = "series", params(SeriesQuery),
    responses((status = 200, description = "the whole gateway's I/O, a point a second for the last hour", body = Series),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn gateway_series(State(s): State<WebState>, q: SeriesParams) -> Result<Json<Series>, Problem> {
    series(&s, Subject::Gateway, q).await
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}/series", tag = "series", params(("pan" = String, Path), SeriesQuery),
    responses((status = 200, description = "the I/O of the PAN's LUNs", body = Series),
        (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn pan_series(
    State(s): State<WebState>,
    Params(pan): Params<String>,
    q: SeriesParams,
) -> Result<Json<Series>, Problem> {
    series(&s, Subject::Pan(pan), q).await
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}/luns/{lun}/series", tag = "series",
    params(("pan" = String, Path), ("lun" = String, Path), SeriesQuery),
    responses((status = 200, description = "the LUN's IOPS, throughput and latency", body = Series),
        (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn lun_series(
    State(s): State<WebState>,
    Params((pan, lun)): Params<(String, String)>,
    q: SeriesParams,
) -> Result<Json<Series>, Problem> {
    series(&s, Subject::Lun(pan, lun), q).await
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}/nodes/{node}/series", tag = "series",
    params(("pan" = String, Path), ("node" = String, Path), SeriesQuery),
    responses((status = 200, description = "the node's I/O (with per-node metrics) and its LAN ports' traffic", body = Series),
        (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn node_series(
    State(s): State<WebState>,
    Params((pan, node)): Params<(String, String)>,
    q: SeriesParams,
) -> Result<Json<Series>, Problem> {
    series(&s, Subject::Node(pan, node), q).await
}

#[utoipa::path(get, path = "/api/v1/pans/{pan}/lans/{lan}/series", tag = "series",
    params(("pan" = String, Path), ("lan" = String, Path), SeriesQuery),
    responses((status = 200, description = "the LAN's frames, bytes and drops", body = Series),
        (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn lan_series(
    State(s): State<WebState>,
    Params((pan, lan)): Params<(String, String)>,
    q: SeriesParams,
) -> Result<Json<Series>, Problem> {
    series(&s, Subject::Lan(pan, lan), q).await
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The API's routes.
pub fn routes() -> Router<WebState> {
    use axum::routing::delete;
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/pans", get(list_pans).post(create_pan))
        .route("/api/v1/pans/{pan}", get(get_pan).delete(delete_pan))
        .route("/api/v1/pans/{pan}/nodes", post(create_node))
        .route("/api/v1/pans/{pan}/nodes/{node}", delete(delete_node))
        .route("/api/v1/pans/{pan}/nodes/{node}/maps", post(map_lun))
        .route("/api/v1/pans/{pan}/nodes/{node}/failover", post(failover))
        .route("/api/v1/pans/{pan}/nodes/{node}/maps/{target}/{lun}", delete(unmap_lun))
        .route("/api/v1/pans/{pan}/luns", post(create_lun))
        .route("/api/v1/pans/{pan}/luns/{lun}", get(get_lun).delete(delete_lun))
        .route("/api/v1/pans/{pan}/luns/{lun}/resize", post(resize_lun))
        .route("/api/v1/pans/{pan}/lans", post(create_lan))
        .route("/api/v1/pans/{pan}/lans/{lan}", delete(delete_lan))
        .route("/api/v1/pans/{pan}/lans/{lan}/move-ip", post(move_ip))
        .route("/api/v1/pans/{pan}/lans/{lan}/clusters", post(create_cluster))
        .route("/api/v1/pans/{pan}/lans/{lan}/clusters/{cluster}", put(replace_cluster).delete(delete_cluster))
        .route("/api/v1/pans/{pan}/lans/{lan}/clusters/{cluster}/drain", post(drain))
        .route("/api/v1/series", get(gateway_series))
        .route("/api/v1/pans/{pan}/series", get(pan_series))
        .route("/api/v1/pans/{pan}/luns/{lun}/series", get(lun_series))
        .route("/api/v1/pans/{pan}/nodes/{node}/series", get(node_series))
        .route("/api/v1/pans/{pan}/lans/{lan}/series", get(lan_series))
        .route("/api/v1/iscsi/sessions", get(list_iscsi_sessions))
        .route("/api/v1/iscsi/sessions/{id}", delete(drop_iscsi_session))
}
