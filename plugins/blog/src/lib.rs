//! `blog`: posts in the module's own database (table `blog_posts`), with create, read,
//! update, delete and list routes, JSON in and out.
//!
//! It publishes `blog.post.created`, caches single posts (invalidated on update and
//! delete), and gates premium posts on the reader's subscription, asked of `billing`
//! through its `billing.subscription.get` service.

use std::time::Duration;

use modhost_plugin_api::{prelude::*, schema_of, CallErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

modhost_plugin_api::include_permissions!();

#[derive(Default)]
pub struct Blog;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct Post {
    id: i64,
    title: String,
    body: String,
    premium: bool,
    created_at: String,
}

/// A row as stored: `premium` is an integer on every backend.
#[derive(Debug, Deserialize)]
struct PostRow {
    id: i64,
    title: String,
    body: String,
    premium: i64,
    created_at: String,
}

impl From<PostRow> for Post {
    fn from(r: PostRow) -> Self {
        Post {
            id: r.id,
            title: r.title,
            body: r.body,
            premium: r.premium != 0,
            created_at: r.created_at,
        }
    }
}

/// The payload of `blog.post.created`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct PostCreated {
    id: i64,
    title: String,
    premium: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostInput {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    premium: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    max_title_len: usize,
    page_size: i64,
    premium_plan: String,
    cache_ttl_secs: u64,
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
struct Posts {
    db: Database,
    cache: Cache,
    events: Events,
    services: Services,
    config: Config,
}

const COLUMNS: &str = "id, title, body, premium, created_at";

type HandlerResult = std::result::Result<Response, Response>;

/// The post id in the path, or a 400.
fn post_id(req: &Request) -> std::result::Result<i64, Response> {
    req.param("id")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Response::error(400, "post id must be a positive integer"))
}

fn cache_key(id: i64) -> String {
    format!("post:{id}")
}

impl Posts {
    /// The validated body of a create or update, or a 400.
    fn input(&self, req: &Request) -> std::result::Result<PostInput, Response> {
        let input: PostInput = req.json()?;
        let len = input.title.chars().count();
        if input.title.trim().is_empty() || len > self.config.max_title_len {
            return Err(Response::error(
                400,
                format!(
                    "title must be 1 to {} characters",
                    self.config.max_title_len
                ),
            ));
        }
        Ok(input)
    }

    async fn one(
        &self,
        sql: &str,
        params: &[Value],
    ) -> std::result::Result<Option<Post>, Response> {
        let row: Option<PostRow> = self.db.query_opt_as(sql, params).await?;
        Ok(row.map(Post::from))
    }

    async fn list(self, req: Request) -> HandlerResult {
        let limit = match req.query_param("limit") {
            None => self.config.page_size,
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
        let rows: Vec<PostRow> = self
            .db
            .query_as(
                &format!("SELECT {COLUMNS} FROM blog_posts WHERE id > $1 ORDER BY id LIMIT $2"),
                params![after, limit],
            )
            .await?;
        let posts: Vec<Post> = rows.into_iter().map(Post::from).collect();
        Ok(Response::json(200, &posts))
    }

    async fn create(self, req: Request) -> HandlerResult {
        let input = self.input(&req)?;
        let sql = format!(
            "INSERT INTO blog_posts (title, body, premium) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
        );
        let post = self
            .one(
                &sql,
                params![input.title, input.body, i64::from(input.premium)],
            )
            .await?
            .ok_or_else(|| Response::error(500, "insert returned no row"))?;
        let created = PostCreated {
            id: post.id,
            title: post.title.clone(),
            premium: post.premium,
        };
        self.events.publish("blog.post.created", &created).await?;
        tracing::info!(id = post.id, "post created");
        Ok(Response::json(201, &post))
    }

    /// A post, from the cache when it is there.
    async fn cached(&self, id: i64) -> std::result::Result<Option<Post>, Response> {
        if let Ok(Some(post)) = self.cache.get_json::<Post>(&cache_key(id)).await {
            return Ok(Some(post));
        }
        let post = self
            .one(
                &format!("SELECT {COLUMNS} FROM blog_posts WHERE id = $1"),
                params![id],
            )
            .await?;
        if let Some(p) = &post {
            let ttl = Some(Duration::from_secs(self.config.cache_ttl_secs));
            // A cache failure only costs the next read a query.
            let _ = self.cache.set_json(&cache_key(id), p, ttl).await;
        }
        Ok(post)
    }

    async fn read(self, req: Request) -> HandlerResult {
        let id = post_id(&req)?;
        let post = self
            .cached(id)
            .await?
            .ok_or_else(|| Response::error(404, format!("no post with id {id}")))?;
        if post.premium {
            let user = req.user().map(|u| u.id.clone()).unwrap_or_default();
            let sub: std::result::Result<serde_json::Value, CallError> = self
                .services
                .call(
                    "billing.subscription.get",
                    &json!({ "user_id": user }),
                    Duration::from_secs(2),
                )
                .await;
            match sub {
                Ok(s) if s["plan"] == self.config.premium_plan.as_str() => {}
                Ok(_)
                | Err(CallError {
                    kind: CallErrorKind::NotFound,
                    ..
                }) => {
                    let plan = &self.config.premium_plan;
                    return Err(Response::error(
                        402,
                        format!("post {id} is premium: subscribe to the `{plan}` plan"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Response::json(200, &post))
    }

    async fn update(self, req: Request) -> HandlerResult {
        let id = post_id(&req)?;
        let input = self.input(&req)?;
        let sql = format!("UPDATE blog_posts SET title = $1, body = $2, premium = $3 WHERE id = $4 RETURNING {COLUMNS}");
        let post = self
            .one(
                &sql,
                params![input.title, input.body, i64::from(input.premium), id],
            )
            .await?;
        let _ = self.cache.delete(&cache_key(id)).await;
        post.map(|p| Response::json(200, &p))
            .ok_or_else(|| Response::error(404, format!("no post with id {id}")))
    }

    async fn delete(self, req: Request) -> HandlerResult {
        let id = post_id(&req)?;
        let deleted = self
            .db
            .execute("DELETE FROM blog_posts WHERE id = $1", params![id])
            .await?;
        let _ = self.cache.delete(&cache_key(id)).await;
        match deleted {
            0 => Err(Response::error(404, format!("no post with id {id}"))),
            _ => Ok(Response::new(204)),
        }
    }
}

impl Module for Blog {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let blog = Posts {
            db: ctx.database(),
            cache: ctx.cache(),
            events: ctx.events(),
            services: ctx.services(),
            config: ctx.config()?,
        };
        let b = blog.clone();
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts",
            permissions::POST_READ,
            move |req| b.clone().list(req),
        )?;
        let b = blog.clone();
        ctx.route(
            Method::Post,
            "/api/v1/blog/posts",
            permissions::POST_CREATE,
            move |req| b.clone().create(req),
        )?;
        let b = blog.clone();
        ctx.route(
            Method::Get,
            "/api/v1/blog/posts/{id}",
            permissions::POST_READ,
            move |req| b.clone().read(req),
        )?;
        let b = blog.clone();
        ctx.route(
            Method::Put,
            "/api/v1/blog/posts/{id}",
            permissions::POST_UPDATE,
            move |req| b.clone().update(req),
        )?;
        let max_title = blog.config.max_title_len;
        let b = blog;
        ctx.route(
            Method::Delete,
            "/api/v1/blog/posts/{id}",
            permissions::POST_DELETE,
            move |req| b.clone().delete(req),
        )?;
        describe(ctx, max_title)?;
        Ok(())
    }
}

/// What `/openapi.json` says of the routes and the event: exactly what they accept.
fn describe(ctx: &mut InitContext, max_title: usize) -> Result<()> {
    let id = json!({ "type": "integer", "format": "int64", "minimum": 1 });
    let input = json!({
        "type": "object",
        "properties": {
            // At least one character that is not white space.
            "title": { "type": "string", "minLength": 1, "maxLength": max_title, "pattern": "\\S" },
            "body": { "type": "string" },
            "premium": { "type": "boolean" },
        },
        "required": ["title"],
        "additionalProperties": false,
    });
    let post = schema_of::<Post>();
    let list = json!({ "type": "array", "items": post });
    let path = "/api/v1/blog/posts";
    let one = "/api/v1/blog/posts/{id}";
    ctx.describe_route(
        Method::Get,
        path,
        RouteDoc::new("List posts, oldest first")
            .query(
                "limit",
                json!({ "type": "integer", "minimum": 1, "maximum": 1000 }),
                false,
            )
            .query(
                "after",
                json!({ "type": "integer", "format": "int64" }),
                false,
            )
            .response(200, list),
    )?;
    ctx.describe_route(
        Method::Post,
        path,
        RouteDoc::new("Create a post; publishes blog.post.created")
            .body(input.clone())
            .response(201, post.clone()),
    )?;
    ctx.describe_route(
        Method::Get,
        one,
        RouteDoc::new("Read a post (402 for a premium post without the premium plan)")
            .param("id", id.clone())
            .response(200, post.clone()),
    )?;
    ctx.describe_route(
        Method::Put,
        one,
        RouteDoc::new("Replace a post")
            .param("id", id.clone())
            .body(input)
            .response(200, post),
    )?;
    ctx.describe_route(
        Method::Delete,
        one,
        RouteDoc::new("Delete a post").param("id", id),
    )?;
    ctx.describe_event("blog.post.created", schema_of::<PostCreated>())
}

modhost_plugin_api::export_module!(Blog);
