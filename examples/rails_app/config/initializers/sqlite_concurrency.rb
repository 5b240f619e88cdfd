# frozen_string_literal: true

# SQLite under a multi-threaded process (the sidecar runs several jobs at once) with Rails 6.1
# and Debian's sqlite3 gem 1.4:
# 1. `timeout:` in database.yml becomes sqlite's busy_timeout, which waits inside C holding
#    Ruby's GVL: the thread that holds the write lock cannot run to COMMIT, so every waiter
#    times out with "database is locked". A Ruby busy handler sleeps with the GVL released.
# 2. A deferred transaction that reads before it writes fails at once with SQLITE_BUSY in WAL
#    mode (no busy handler for a stale snapshot); BEGIN IMMEDIATE takes the write lock first.
# Rails 7.1 does both by default. PostgreSQL (DATABASE_URL) needs none of this.
module Demo
  module SQLiteConcurrency
    def configure_connection
      super
      timeout_s = self.class.type_cast_config_to_integer(@config[:timeout] || 5000) / 1000.0
      @connection.busy_handler do |count|
        # count: how many times this lock wait has been retried
        if count * 0.001 < timeout_s
          sleep(0.001)
          true
        else
          false
        end
      end
    end

    def begin_db_transaction
      log("begin immediate transaction", "TRANSACTION") { @connection.transaction(:immediate) }
    end
  end
end

ActiveSupport.on_load(:active_record_sqlite3adapter) do
  prepend Demo::SQLiteConcurrency
end
