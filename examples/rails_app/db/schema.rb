# frozen_string_literal: true

# Loaded by `bin/rails db:prepare` (bin/setup). Hand-written: the app has no migrations,
# and config.active_record.dump_schema_after_migration is off so Rails never rewrites it.
ActiveRecord::Schema.define(version: 2026_11_29_000001) do
  create_table "widgets", force: :cascade do |t|
    t.string "name", null: false
    t.timestamps
  end

  # One row per execution a job recorded: what the job saw.
  create_table "job_runs", force: :cascade do |t|
    t.string "jid"
    t.string "job_class", null: false
    t.string "kind", null: false
    t.string "status", null: false, default: "performed"
    t.text "args_json"
    t.string "provider_job_id"
    t.integer "model_id"
    t.text "middleware_context"
    t.string "idempotency_key"
    t.integer "attempt"
    t.text "details"
    t.timestamps
    t.index ["jid"]
    t.index ["kind"]
  end

  # Hooks: sidekiq_retries_exhausted, death handlers, error handlers.
  create_table "job_events", force: :cascade do |t|
    t.string "event", null: false
    t.string "jid"
    t.string "job_class"
    t.string "error_class"
    t.text "error_message"
    t.text "details"
    t.timestamps
    t.index ["jid"]
    t.index ["event"]
  end
end
