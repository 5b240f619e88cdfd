# frozen_string_literal: true

# No Bundler: this app runs on Debian's packaged gems (ruby-rails, ruby-sidekiq, puma,
# ruby-sqlite3, ruby-pg), which are all on the default load path.
ENV["RAILS_ENV"] ||= ENV["RACK_ENV"] || "development"
