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
    #    block) leaves the indexes not yet taken unyielded; they are returned. A block that
    #    returns BUSY (its job found no free slot) hands its index back while another thread of
    #    the round still runs one, and its thread leaves the round: that index is yielded again
    #    to a thread that stays, once it is done with its own (the last thread's BUSY stands).
    # 2. Start the helpers on first use in the process that uses them (a Puma worker, after
    #    the fork) and keep them; a helper survives whatever a block raises.
    class JobThreads
      BUSY = :busy # a block's answer: its job found every job slot taken

      # One call of #each: the indexes handed out, and who still runs a block of it.
      class Round
        attr_reader :left

        def initialize(count, block)
          @count = count
          @block = block
          @next = 0
          @back = [] # indexes handed back (BUSY), yielded again before the next new one
          @active = 0
          @left = []
          @lock = Mutex.new
          @done = ConditionVariable.new
        end

        # Run blocks until no index is left (called by the owner and by each helper). A thread
        # leaves under the lock in the same step that finds nothing left or hands an index
        # back, so an index handed back always has a thread still in the round to take it.
        def work
          @lock.synchronize { @active += 1 }
          inside = true
          begin
            while (i = take)
              next unless @block.call(i, self) == BUSY

              break if hand_back(i)
            end
            inside = false
          ensure
            @lock.synchronize { leave } if inside
          end
        end

        def stop!
          @lock.synchronize do
            @left.concat(@back, (@next...@count).to_a)
            @back.clear
            @next = @count
          end
        end

        # Once every index is taken and no block runs any more.
        def wait
          @lock.synchronize do
            @done.wait(@lock) until @next >= @count && @active.zero?
            @left.concat(@back) # only when a block raised in the last thread: never run
            @back.clear
          end
        end

        private

        # The next index, or nil (and this thread has left).
        def take
          @lock.synchronize do
            return @back.shift unless @back.empty?
            if @next >= @count
              leave
              return nil
            end

            @next += 1
            @next - 1
          end
        end

        # Whether `i` went back to the round (another thread still runs a job of it) and this
        # thread left; false for the last thread, whose answer stands.
        def hand_back(i)
          @lock.synchronize do
            return false if @active <= 1

            @back << i
            leave
            true
          end
        end

        def leave
          @active -= 1
          @done.broadcast if @active.zero?
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
