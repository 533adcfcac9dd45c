//! `blog`: posts in the module's own database (table `blog_posts`), with create, read,
//! update, delete and list routes, JSON in and out.

use modhost_plugin_api::prelude::*;
use serde::{Deserialize, Serialize};

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Blog;

#[derive(Debug, Serialize, Deserialize)]
struct Post {
    id: i64,
    title: String,
    body: String,
    created_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostInput {
    title: String,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    max_title_len: usize,
    page_size: i64,
}

const COLUMNS: &str = "id, title, body, created_at";

type HandlerResult = std::result::Result<Response, Response>;

/// The post id in the path, or a 400.
fn post_id(req: &Request) -> std::result::Result<i64, Response> {
    req.param("id")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Response::error(400, "post id must be a positive integer"))
}

/// The validated body of a create or update, or a 400.
fn post_input(req: &Request, config: &Config) -> std::result::Result<PostInput, Response> {
    let input: PostInput = req.json()?;
    let len = input.title.chars().count();
    if input.title.trim().is_empty() || len > config.max_title_len {
        return Err(Response::error(
            400,
            format!("title must be 1 to {} characters", config.max_title_len),
        ));
    }
    Ok(input)
}

async fn list(db: Database, config: Config, req: Request) -> HandlerResult {
    let limit = match req.query_param("limit") {
        None => config.page_size,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| Response::error(400, "limit must be 1 to 1000"))?,
    };
    let after = req
        .query_param("after")
        .map(|a| {
            a.parse::<i64>()
                .map_err(|_| Response::error(400, "after must be a post id"))
        })
        .transpose()?
        .unwrap_or(0);
    let posts: Vec<Post> = db
        .query_as(
            &format!("SELECT {COLUMNS} FROM blog_posts WHERE id > $1 ORDER BY id LIMIT $2"),
            params![after, limit],
        )
        .await?;
    Ok(Response::json(200, &posts))
}

async fn create(db: Database, config: Config, req: Request) -> HandlerResult {
    let input = post_input(&req, &config)?;
    let post: Option<Post> = db
        .query_opt_as(
            &format!("INSERT INTO blog_posts (title, body) VALUES ($1, $2) RETURNING {COLUMNS}"),
            params![input.title, input.body],
        )
        .await?;
    let post = post.ok_or_else(|| Response::error(500, "insert returned no row"))?;
    tracing::info!(id = post.id, "post created");
    Ok(Response::json(201, &post))
}

async fn read(db: Database, req: Request) -> HandlerResult {
    let id = post_id(&req)?;
    let post: Option<Post> = db
        .query_opt_as(
            &format!("SELECT {COLUMNS} FROM blog_posts WHERE id = $1"),
            params![id],
        )
        .await?;
    post.map(|p| Response::json(200, &p))
        .ok_or_else(|| Response::error(404, format!("no post with id {id}")))
}

async fn update(db: Database, config: Config, req: Request) -> HandlerResult {
    let id = post_id(&req)?;
    let input = post_input(&req, &config)?;
    let post: Option<Post> = db
        .query_opt_as(
            &format!(
                "UPDATE blog_posts SET title = $1, body = $2 WHERE id = $3 RETURNING {COLUMNS}"
            ),
            params![input.title, input.body, id],
        )
        .await?;
    post.map(|p| Response::json(200, &p))
        .ok_or_else(|| Response::error(404, format!("no post with id {id}")))
}

async fn delete(db: Database, req: Request) -> HandlerResult {
    let id = post_id(&req)?;
    match db
        .execute("DELETE FROM blog_posts WHERE id = $1", params![id])
        .await?
    {
        0 => Err(Response::error(404, format!("no post with id {id}"))),
        _ => Ok(Response::new(204)),
    }
}

impl Module for Blog {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let config: Config = ctx.config()?;
        let db = ctx.database();
        let (d, c) = (db.clone(), config.clone());
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts",
            permissions::POST_READ,
            move |req| list(d.clone(), c.clone(), req),
        )?;
        let (d, c) = (db.clone(), config.clone());
        ctx.route(
            Method::Post,
            "/api/v1/blog/posts",
            permissions::POST_CREATE,
            move |req| create(d.clone(), c.clone(), req),
        )?;
        let d = db.clone();
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts/{id}",
            permissions::POST_READ,
            move |req| read(d.clone(), req),
        )?;
        let (d, c) = (db.clone(), config);
        ctx.route(
            Method::Put,
            "/api/v1/blog/posts/{id}",
            permissions::POST_UPDATE,
            move |req| update(d.clone(), c.clone(), req),
        )?;
        let d = db;
        ctx.route(
            Method::Delete,
            "/api/v1/blog/posts/{id}",
            permissions::POST_DELETE,
            move |req| delete(d.clone(), req),
        )?;
        Ok(())
    }
}

modhost_plugin_api::export_module!(Blog);
