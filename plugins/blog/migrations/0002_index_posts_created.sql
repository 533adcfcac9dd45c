CREATE INDEX blog_posts_created_at ON blog_posts (created_at);
