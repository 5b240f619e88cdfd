# frozen_string_literal: true

namespace :demo do
  desc "Enqueue demo jobs with the Sidekiq client: rake demo:enqueue[kind,count] (see DemoEnqueuer::KINDS)"
  task :enqueue, [:kind, :count] => :environment do |_t, args|
    jids = DemoEnqueuer.enqueue(args[:kind] || "plain", (args[:count] || 1).to_i)
    puts JSON.generate({kind: args[:kind] || "plain", jids: jids})
  end

  desc "Print the recorded job runs as JSON"
  task runs: :environment do
    puts JSON.generate(JobRun.order(:id).last(100))
  end
end

# Rails 6.1's db:prepare only loads the schema when connecting raises NoDatabaseError, which
# SQLite never does (it creates the file), so it would leave a fresh SQLite file empty.
# This one creates the database when needed (PostgreSQL via DATABASE_URL) and loads
# db/schema.rb whenever the app's tables are missing. Offline; idempotent.
Rake::Task["db:prepare"].clear if Rake::Task.task_defined?("db:prepare")
namespace :db do
  desc "Create the database if needed and load db/schema.rb if its tables are missing"
  task prepare: :load_config do
    db_config = ActiveRecord::Base.configurations.configs_for(env_name: Rails.env).first
    begin
      ActiveRecord::Base.establish_connection(db_config)
      ActiveRecord::Base.connection.verify!
    rescue ActiveRecord::NoDatabaseError
      ActiveRecord::Tasks::DatabaseTasks.create(db_config)
      ActiveRecord::Base.establish_connection(db_config)
    end
    connection = ActiveRecord::Base.connection
    unless connection.table_exists?("job_runs")
      ActiveRecord::Tasks::DatabaseTasks.load_schema(db_config, :ruby, Rails.root.join("db/schema.rb").to_s)
      connection = ActiveRecord::Base.connection
    end
    # SQLite: write-ahead logging lets the sidecar's threads write while other processes read.
    connection.execute("PRAGMA journal_mode=WAL") if connection.adapter_name =~ /sqlite/i
    puts "db:prepare: #{connection.adapter_name} #{db_config.database} ready (#{connection.tables.sort.join(", ")})"
  end
end
