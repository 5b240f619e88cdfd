# frozen_string_literal: true

module Fastworker
  module Sidecar
    # JobThreads: threads that run the jobs of one batch at the same time, as Sidekiq's
    # processor threads run their jobs.
    #
    # Why: a batch runs its jobs one after the other on its request's thread, which is right
    # for jobs that only compute (the GVL lets one thread run at a time anyway). Jobs that
    # mostly wait, such as one quick query, then wait one after the other where Sidekiq's
    # threads wait together. Measured on the project's 2-core machine (`bench/vs_sidekiq.py
    # --kind wait`: 0.2 ms of waiting and an RPUSH per job, one process each): Sidekiq 4,678
    # jobs/s, fastworker 2,295 with serial batches, 3,638 with this.
    #
    # Duties:
    # 1. `each(count, threads) { |i, round| ... }` yields every index in 0...count exactly
    #    once, spread over the calling thread and up to `threads - 1` helper threads (`size - 1`
    #    at most), each taking the next index as it finishes the last; it returns once every
    #    index has been yielded and every block has returned. `round.stop!` (from within a
    #    block) leaves the indexes not yet taken unyielded; they are returned.
    # 2. Start the helpers on first use in the process that uses them (a Puma worker, after
    #    the fork) and keep them; a helper survives whatever a block raises.
    class JobThreads
      # One call of #each: the indexes handed out, and who still runs a block of it.
      class Round
        attr_reader :left

        def initialize(count, block)
          @count = count
          @block = block
          @next = 0
          @active = 0
          @left = []
          @lock = Mutex.new
          @done = ConditionVariable.new
        end

        # Run blocks until no index is left (called by the owner and by each helper).
        def work
          @lock.synchronize { @active += 1 }
          begin
            while (i = take)
              @block.call(i, self)
            end
          ensure
            @lock.synchronize do
              @active -= 1
              @done.broadcast if @active.zero?
            end
          end
        end

        def stop!
          @lock.synchronize do
            @left.concat((@next...@count).to_a)
            @next = @count
          end
        end

        # Once every index is taken and no block runs any more.
        def wait
          @lock.synchronize do
            @done.wait(@lock) until @next >= @count && @active.zero?
          end
        end

        private

        def take
          @lock.synchronize do
            return nil if @next >= @count

            @next += 1
            @next - 1
          end
        end
      end

      def initialize(size)
        @size = size
        @queue = nil
        @pid = nil
        @lock = Mutex.new
      end

      # Yields (index, round) on up to `threads` threads; returns the indexes left untaken by
      # round.stop!.
      def each(count, threads = @size, &block)
        round = Round.new(count, block)
        helpers = [count, threads, @size].min - 1
        if helpers.positive?
          queue = started
          helpers.times { queue << round }
        end
        begin
          round.work
        ensure
          round.wait
        end
        round.left
      end

      private

      def started
        @lock.synchronize do
          if @pid != Process.pid # first use here, or a fork inherited the queue but not its threads
            @pid = Process.pid
            @queue = Queue.new
            queue = @queue
            (@size - 1).times { Thread.new { help(queue) } }
          end
          @queue
        end
      end

      def help(queue)
        Thread.current.name = "fastworker-job"
        loop do
          round = queue.pop
          begin
            round.work
          rescue Exception # rubocop:disable Lint/RescueException -- a helper outlives any job (Sidekiq::Shutdown included)
            nil
          end
        end
      end
    end
  end
end
